//! The HelmChart controller loop (k3s-io/helm-controller's behaviour):
//! for each HelmChart a `helm-install-<name>` Job that runs helm, replaced
//! when its inputs (spec, HelmChartConfig) change; the finalizer
//! `wrangler.cattle.io/on-helm-chart-remove` holds a deleted chart until a
//! `helm-delete-<name>` Job has uninstalled it. Failures of a Job's pod
//! and of the Job are reported as Warning Events and the `Failed`
//! condition, naming helm's error from the pod's log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams,
    PostParams, PropagationPolicy,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::job::{self, Desired, JobSettings, LABEL_CHART};
use crate::replicaset::record_event;

/// The finalizer upstream's controller puts on every HelmChart it manages.
pub const FINALIZER: &str = "wrangler.cattle.io/on-helm-chart-remove";
/// Field manager of the objects the controller applies.
const MANAGER: &str = "helm-controller";
/// The component named in Events.
const COMPONENT: &str = "helm-controller";

/// The HelmChart resource.
pub fn helmchart_resource() -> ApiResource {
    ApiResource {
        group: "helm.cattle.io".into(),
        version: "v1".into(),
        api_version: "helm.cattle.io/v1".into(),
        kind: "HelmChart".into(),
        plural: "helmcharts".into(),
    }
}

/// The HelmChartConfig resource.
pub fn helmchartconfig_resource() -> ApiResource {
    ApiResource {
        group: "helm.cattle.io".into(),
        version: "v1".into(),
        api_version: "helm.cattle.io/v1".into(),
        kind: "HelmChartConfig".into(),
        plural: "helmchartconfigs".into(),
    }
}

/// Errors of one reconcile (retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client's error.
        source: kube::Error,
    },
    /// An object did not decode.
    #[error("{0}")]
    Decode(String),
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

struct Ctx {
    client: kube::Client,
    settings: JobSettings,
    /// Per chart uid: the pod restarts already reported and helm's last
    /// error seen in a failed pod's log.
    seen: Mutex<HashMap<String, (Vec<String>, String)>>,
}

fn reference(chart: &Value) -> ObjectReference {
    ObjectReference {
        api_version: Some("helm.cattle.io/v1".into()),
        kind: Some("HelmChart".into()),
        name: Some(job::name(chart).into()),
        namespace: Some(job::namespace(chart).into()),
        uid: chart["metadata"]["uid"].as_str().map(str::to_string),
        ..Default::default()
    }
}

async fn event(ctx: &Ctx, chart: &Value, type_: &str, reason: &str, message: String) {
    record_event(
        &ctx.client,
        COMPONENT,
        &reference(chart),
        type_,
        reason,
        message,
    )
    .await;
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    let mut c = json!({"type": type_, "status": status});
    if !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    if !message.is_empty() {
        c["message"] = json!(message);
    }
    c
}

/// Writes the chart's status when it differs from what is there.
async fn set_status(ctx: &Ctx, chart: &Value, status: Value) -> Result<(), Error> {
    if chart["status"] == status {
        return Ok(());
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        job::namespace(chart),
        &helmchart_resource(),
    );
    api.patch_status(
        job::name(chart),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map_err(api_err("writing the HelmChart's status"))?;
    Ok(())
}

fn has_finalizer(chart: &Value) -> bool {
    chart["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Adds or removes the finalizer, guarded by the chart's resourceVersion.
async fn set_finalizer(ctx: &Ctx, chart: &Value, present: bool) -> Result<(), Error> {
    let mut list: Vec<Value> = chart["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.retain(|f| f != FINALIZER);
    if present {
        list.push(json!(FINALIZER));
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        job::namespace(chart),
        &helmchart_resource(),
    );
    let patch = json!({"metadata": {"finalizers": list,
        "resourceVersion": chart["metadata"]["resourceVersion"]}});
    match api
        .patch(
            job::name(chart),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(api_err("updating the HelmChart's finalizers")(e)),
    }
}

/// Server-side applies `obj` through a typed API.
async fn apply<K>(api: &Api<K>, obj: &Value) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(api_err(format!(
        "applying {} {name}",
        obj["kind"].as_str().unwrap_or("")
    )))?;
    Ok(())
}

/// The objects a Job needs besides itself.
async fn apply_related(ctx: &Ctx, ns: &str, d: &Desired) -> Result<(), Error> {
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    apply(&sas, &d.service_account).await?;
    let crbs: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    apply(&crbs, &d.role_binding).await?;
    if let Some(s) = &d.values_secret {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        apply(&secrets, s).await?;
    }
    if let Some(c) = &d.content_config_map {
        let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
        apply(&cms, c).await?;
    }
    Ok(())
}

fn job_condition(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

/// The line of a helm run's log that says what went wrong: helm's last
/// `Error: ...`, else `rke2 helm-job`'s own (`helm-job: ...`), else the
/// last line mentioning an error, else the last one. The job's own line is
/// looked for by its prefix, not its place: stdout and stderr reach the
/// log through separate copies, so the last line written to stderr is not
/// always the last line of the log.
pub fn error_line(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let last_with = |prefix: &str| lines.iter().rev().find(|l| l.starts_with(prefix));
    last_with("Error:")
        .or_else(|| last_with("helm-job:"))
        .or_else(|| {
            lines
                .iter()
                .rev()
                .find(|l| l.to_ascii_lowercase().contains("error"))
        })
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

/// Reports pods of the chart's Job whose helm run failed (a container
/// that ended with a non-zero code), once per restart, with helm's error
/// from the log of that run. Returns the last error known for the chart.
async fn report_pod_failures(ctx: &Ctx, chart: &Value, job: &Job) -> String {
    let uid = chart["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let ns = job::namespace(chart);
    let job_uid = job.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("{LABEL_CHART}={}", job::name(chart))))
        .await;
    let mut found = Vec::new();
    for p in list.map(|l| l.items).unwrap_or_default() {
        let owned = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == job_uid);
        if !owned {
            continue;
        }
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        for cs in p
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
        {
            let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            let now = cs.state.as_ref().and_then(|s| s.terminated.as_ref());
            // A run that failed: the previous one (restarted) or the
            // current one (stopped).
            for (term, previous, restarts) in [
                (last, true, cs.restart_count),
                (now, false, cs.restart_count + 1),
            ] {
                if let Some(t) = term.filter(|t| t.exit_code != 0) {
                    found.push((
                        pod_name.clone(),
                        restarts,
                        previous,
                        t.exit_code,
                        cs.restart_count,
                    ));
                }
            }
        }
    }
    let mut last_error = ctx
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&uid)
        .map(|(_, e)| e.clone())
        .unwrap_or_default();
    for (pod_name, restarts, previous, code, observed) in found {
        let key = format!("{pod_name}/{restarts}");
        let known = ctx
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .is_some_and(|(keys, _)| keys.contains(&key));
        if known {
            continue;
        }
        let log = pods
            .logs(
                &pod_name,
                &LogParams {
                    previous,
                    tail_lines: Some(40),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_default();
        // The container may have been restarted between the list and the
        // log read: the log would then be the next run's (cut short).
        // Such a read is dropped; the next look finds this run as the
        // previous one.
        let restart_count_now = pods.get_opt(&pod_name).await.ok().flatten().and_then(|p| {
            p.status?
                .container_statuses?
                .first()
                .map(|c| c.restart_count)
        });
        if restart_count_now != Some(observed) {
            continue;
        }
        let line = error_line(&log);
        let message = format!(
            "Job {ns}/{} pod {pod_name}: helm exited with code {code}: {line}",
            job.metadata.name.as_deref().unwrap_or("")
        );
        warn!(chart = %job::name(chart), namespace = %ns, %message, "helm run failed");
        event(ctx, chart, "Warning", "JobPodFailed", message).await;
        last_error = line.clone();
        let mut seen = ctx.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(uid.clone()).or_default();
        entry.0.push(key);
        entry.1 = line;
    }
    last_error
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let chart = serde_json::to_value(&*obj).map_err(|e| Error::Decode(e.to_string()))?;
    if !job::managed(&chart) {
        return Ok(Action::await_change());
    }
    if job::deleting(&chart) {
        return remove(&chart, &ctx).await;
    }
    if !has_finalizer(&chart) {
        // The update wakes this loop again with the finalizer in place.
        set_finalizer(&ctx, &chart, true).await?;
        return Ok(Action::await_change());
    }
    let (ns, name) = (job::namespace(&chart), job::name(&chart));
    match chart["spec"]["helmVersion"].as_str().unwrap_or("") {
        "" | "v3" => {}
        other => {
            event(
                &ctx,
                &chart,
                "Warning",
                "UnsupportedVersion",
                format!("Unsupported Helm version {other}: only v3 charts are supported"),
            )
            .await;
            let status = json!({"conditions": [
                condition("JobCreated", "False", "", ""),
                condition("Failed", "True", "Unsupported version", "Only Helm v3 charts are supported"),
            ]});
            set_status(&ctx, &chart, status).await?;
            return Ok(Action::await_change());
        }
    }
    let configs: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &helmchartconfig_resource());
    let config = configs
        .get_opt(name)
        .await
        .map_err(api_err("reading the HelmChartConfig"))?
        .map(|c| serde_json::to_value(c).unwrap_or_default());
    let d = job::desired(&chart, config.as_ref(), &ctx.settings);
    apply_related(&ctx, ns, &d).await?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let job_name = job::job_name(&chart);
    let created_msg = format!("Applying HelmChart using Job {ns}/{job_name}");
    let existing = jobs
        .get_opt(&job_name)
        .await
        .map_err(api_err("reading the helm Job"))?;
    let Some(existing) = existing else {
        let new: Job =
            serde_json::from_value(d.job.clone()).map_err(|e| Error::Decode(e.to_string()))?;
        match jobs.create(&PostParams::default(), &new).await {
            Ok(_) => {}
            // The old Job is still going away.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            Err(e) => return Err(api_err("creating the helm Job")(e)),
        }
        ctx.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(chart["metadata"]["uid"].as_str().unwrap_or(""));
        info!(chart = %name, namespace = %ns, job = %job_name, "helm Job created");
        event(
            &ctx,
            &chart,
            "Normal",
            "ApplyJob",
            format!(
                "Applying HelmChart from {} using Job {ns}/{job_name}",
                job::chart_source(&chart)
            ),
        )
        .await;
        let status = json!({"jobName": job_name, "conditions": [
            condition("JobCreated", "True", "Job created", &created_msg),
            condition("Failed", "False", "", ""),
        ]});
        set_status(&ctx, &chart, status).await?;
        return Ok(Action::await_change());
    };
    let existing_value = serde_json::to_value(&existing).unwrap_or_default();
    if job::hash_of(&existing_value) != d.hash || existing.metadata.deletion_timestamp.is_some() {
        if existing.metadata.deletion_timestamp.is_none() {
            info!(chart = %name, namespace = %ns, job = %job_name, "HelmChart inputs changed; replacing its helm Job");
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Foreground),
                ..Default::default()
            };
            match jobs.delete(&job_name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(api_err("deleting the outdated helm Job")(e)),
            }
        }
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if job_condition(&existing, "Failed") {
        let last = report_pod_failures(&ctx, &chart, &existing).await;
        let mut message =
            "Job has reached configured number of retries without succeeding".to_string();
        if !last.is_empty() {
            message = format!("{message}: {last}");
        }
        let failed_now = chart["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Failed" && c["status"] == "True")
        });
        if !failed_now {
            event(&ctx, &chart, "Warning", "JobFailed", message.clone()).await;
        }
        let status = json!({"jobName": job_name, "conditions": [
            condition("JobCreated", "True", "Job created", &created_msg),
            condition("Failed", "True", "Job failed", &message),
        ]});
        set_status(&ctx, &chart, status).await?;
        return Ok(Action::await_change());
    }
    let running = !job_condition(&existing, "Complete");
    if running {
        report_pod_failures(&ctx, &chart, &existing).await;
    }
    let status = json!({"jobName": job_name, "conditions": [
        condition("JobCreated", "True", "Job created", &created_msg),
        condition("Failed", "False", "", ""),
    ]});
    set_status(&ctx, &chart, status).await?;
    // While helm runs, its pod's failed runs are looked at every 5 s: a
    // restart does not change the Job, and once the Job fails its pod is
    // deleted with the last run's error in it.
    Ok(Action::requeue(Duration::from_secs(if running {
        5
    } else {
        300
    })))
}

/// Deletes an object by name, treating 404 as done.
async fn delete_named<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(api_err(format!("deleting {name}"))(e)),
    }
}

/// A deleted chart: uninstall with the delete Job, then let it go.
async fn remove(chart: &Value, ctx: &Ctx) -> Result<Action, Error> {
    if !has_finalizer(chart) {
        return Ok(Action::await_change());
    }
    let (ns, name) = (job::namespace(chart), job::name(chart));
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let mut install = chart.clone();
    install["metadata"]["deletionTimestamp"] = Value::Null;
    delete_named(&jobs, &job::job_name(&install)).await?;
    let d = job::desired(chart, None, &ctx.settings);
    let job_name = job::job_name(chart);
    let existing = jobs
        .get_opt(&job_name)
        .await
        .map_err(api_err("reading the helm delete Job"))?;
    match existing {
        None => {
            let related = apply_related(ctx, ns, &d).await;
            let new: Job =
                serde_json::from_value(d.job.clone()).map_err(|e| Error::Decode(e.to_string()))?;
            let created = match related {
                Ok(()) => jobs.create(&PostParams::default(), &new).await.map(|_| ()),
                Err(Error::Api { source, .. }) => Err(source),
                Err(e) => return Err(e),
            };
            match created {
                Ok(()) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                // A namespace being deleted takes the release with it.
                Err(kube::Error::Api(e))
                    if e.code == 403 && e.message.contains("being terminated") =>
                {
                    set_finalizer(ctx, chart, false).await?;
                    return Ok(Action::await_change());
                }
                Err(e) => return Err(api_err("creating the helm delete Job")(e)),
            }
            event(
                ctx,
                chart,
                "Normal",
                "RemoveJob",
                format!("Uninstalling HelmChart using Job {ns}/{job_name}"),
            )
            .await;
            let mut status = chart["status"].clone();
            if !status.is_object() {
                status = json!({});
            }
            status["jobName"] = json!(job_name);
            // The chart may be gone already (another server's leader).
            let _ = set_status(ctx, chart, status).await;
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        Some(j) if job_condition(&j, "Complete") => {
            event(
                ctx,
                chart,
                "Normal",
                "RemoveJob",
                format!("Uninstalled HelmChart using Job {ns}/{job_name}, removing resources"),
            )
            .await;
            delete_named(&jobs, &job_name).await?;
            let crbs: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
            delete_named(&crbs, &job::role_binding_name(chart)).await?;
            let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
            delete_named(&sas, &job::service_account_name(chart)).await?;
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            delete_named(&secrets, &format!("chart-values-{name}")).await?;
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            delete_named(&cms, &format!("chart-content-{name}")).await?;
            ctx.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(chart["metadata"]["uid"].as_str().unwrap_or(""));
            set_finalizer(ctx, chart, false).await?;
            info!(chart = %name, namespace = %ns, "HelmChart uninstalled");
            Ok(Action::await_change())
        }
        Some(j) => {
            if job_condition(&j, "Failed") {
                let last = report_pod_failures(ctx, chart, &j).await;
                let _ = set_status(
                    ctx,
                    chart,
                    json!({"jobName": job_name, "conditions": [
                        condition("JobCreated", "True", "Job created", &format!("Uninstalling HelmChart using Job {ns}/{job_name}")),
                        condition("Failed", "True", "Job failed", &format!("Job has reached configured number of retries without succeeding: {last}")),
                    ]}),
                )
                .await;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            report_pod_failures(ctx, chart, &j).await;
            Ok(Action::requeue(Duration::from_secs(5)))
        }
    }
}

fn error_policy(obj: Arc<DynamicObject>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(chart = ?obj.metadata.name, namespace = ?obj.metadata.namespace, error = %e, "HelmChart reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller until `stop` (on the leader). Waits for the
/// HelmChart CRD to be served first.
pub async fn run(client: kube::Client, settings: JobSettings, stop: CancellationToken) {
    let ar = helmchart_resource();
    let charts: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    loop {
        match charts.list(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(e) => debug!(error = %e, "HelmChart type not served yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    let car = helmchartconfig_resource();
    let configs: Api<DynamicObject> = Api::all_with(client.clone(), &car);
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        client,
        settings,
        seen: Mutex::new(HashMap::new()),
    });
    info!("helm controller started");
    let (ar_cfg, ar_pod) = (ar.clone(), ar.clone());
    Controller::new_with(charts, watcher::Config::default(), ar.clone())
        .owns(jobs, watcher::Config::default().labels(LABEL_CHART))
        .watches_with(configs, car, watcher::Config::default(), move |cfg| {
            let ns = cfg.metadata.namespace.clone().unwrap_or_default();
            let name = cfg.metadata.name.clone().unwrap_or_default();
            Some(ObjectRef::new_with(&name, ar_cfg.clone()).within(&ns))
        })
        .watches(
            pods,
            watcher::Config::default().labels(LABEL_CHART),
            move |pod: Pod| {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let chart = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_CHART).cloned());
                chart.map(|c| ObjectRef::new_with(&c, ar_pod.clone()).within(&ns))
            },
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_line_is_helms_error() {
        let log = "+ helm upgrade --install x /tmp/x.tgz\nError: INSTALLATION FAILED: parse error at (x/templates/a.yaml:3)\nhelm-job: helm install exited with code 1\n";
        assert_eq!(
            error_line(log),
            "Error: INSTALLATION FAILED: parse error at (x/templates/a.yaml:3)"
        );
        assert_eq!(error_line("a\nb\n\n"), "b");
        assert_eq!(
            error_line("a\nhelm-job: the helm binary /bin/helm is missing\n"),
            "helm-job: the helm binary /bin/helm is missing"
        );
        assert_eq!(error_line(""), "");
        // The job's failure written to stderr may land before the last
        // stdout line.
        assert_eq!(
            error_line(
                "+ helm status\nhelm-job: Release status is 'failed' and failure policy is 'abort'; waiting for operator intervention\nrelease refused is failed at revision 1\n"
            ),
            "helm-job: Release status is 'failed' and failure policy is 'abort'; waiting for operator intervention"
        );
    }
}
