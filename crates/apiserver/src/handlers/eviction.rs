//! `pods/eviction` (a `policy/v1` Eviction POSTed to a pod): a delete
//! that honours the PodDisruptionBudget selecting the pod, as
//! kube-apiserver's eviction REST does. A pod that is Pending, finished
//! or already being deleted goes at once; otherwise the one budget that
//! selects it must allow a disruption: it is taken (`disruptionsAllowed`
//! decremented, the pod recorded in `disruptedPods` for the disruption
//! controller) in the same compare-and-swap write, then the pod is
//! deleted with the Eviction's `deleteOptions`. A budget that allows none
//! answers upstream's 429 with the `DisruptionBudget` cause, which
//! `kubectl drain` retries.

use super::*;

/// More entries than this in `disruptedPods` means the controller is not
/// keeping up: upstream refuses further evictions.
const MAX_DISRUPTED_PODS: usize = 2000;

fn too_many_requests(message: &str, cause: String) -> ApiError {
    let mut e = ApiError::new(429, "TooManyRequests", message);
    e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}));
    e
}

const VIOLATES: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// POST `pods/<name>/eviction`.
pub(super) async fn evict(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let name = ctx.path.name.clone().unwrap_or_default();
    let ty = crate::request::body_type(content_type.as_deref())
        .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
    let eviction = decode_body(body, ty)?;
    if let Some(n) = eviction["metadata"]["name"].as_str()
        && n != name
    {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let options = match &eviction["deleteOptions"] {
        Value::Object(o) => Value::Object(o.clone()),
        _ => json!({}),
    };
    // A dry run (`kubectl drain --dry-run=server` puts it in the
    // Eviction's options) checks the budget and changes nothing.
    let dry = ctx.dry_run()
        || options["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    let mut last = None;
    for _ in 0..5 {
        match take_budget(ctx, &name, dry).await {
            Ok(()) => {
                if dry {
                    // Still a 404 for a pod that is not there.
                    read_object(ctx, &name).await?;
                } else {
                    let bytes = serde_json::to_vec(&options).unwrap_or_default();
                    delete(ctx, Some("application/json".into()), &bytes).await?;
                }
                return Ok(json_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ));
            }
            // The budget changed under us: read it again.
            Err(e) if e.code == 409 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("loop ran"))
}

/// Takes one disruption from the budget of the pod, or says why not.
async fn take_budget(ctx: &Ctx<'_>, name: &str, dry: bool) -> ApiResult<()> {
    let (pod, _) = read_object(ctx, name).await?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed" | "Pending")
        || pod["metadata"]["deletionTimestamp"].is_string()
    {
        return Ok(());
    }
    let Some(pdbs_rt) = registry::find("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let ns = ctx.ns().unwrap_or("");
    let labels = pod["metadata"]["labels"].clone();
    let page = ctx
        .state
        .store
        .list(&pdbs_rt.prefix(Some(ns)), None, 0, 0)
        .await?;
    let mut matching = Vec::new();
    for kv in &page.items {
        let pdb = objects::from_stored(pdbs_rt, &kv.value, kv.mod_revision)?;
        // policy/v1: a null selector selects nothing, an empty one all.
        if !pdb["spec"]["selector"].is_object() {
            continue;
        }
        let Ok(sel) =
            rke2_apimachinery::selectors::label_selector_from_json(&pdb["spec"]["selector"])
        else {
            continue;
        };
        if sel.matches_value(Some(&labels)) {
            matching.push((pdb, kv.mod_revision));
        }
    }
    let (mut pdb, rev) = match matching.len() {
        0 => return Ok(()),
        1 => matching.pop().expect("one"),
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let pdb_name = objects::name_of(&pdb).to_string();
    let status = &pdb["status"];
    let current = status["currentHealthy"].as_i64().unwrap_or(0);
    let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
    // An unready pod is not counted healthy: evicting it costs the
    // budget nothing while the budget holds (or always, if so chosen).
    if !pod_ready(&pod) {
        let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
        if always || (current >= desired && desired > 0) {
            return Ok(());
        }
    }
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
    if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
        return Err(too_many_requests(
            VIOLATES,
            format!("The disruption budget {pdb_name} is still being processed by the server."),
        ));
    }
    let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
    if allowed < 0 {
        return Err(ApiError::new(
            403,
            "Forbidden",
            "pdb disruptions allowed is negative",
        ));
    }
    if status["disruptedPods"]
        .as_object()
        .is_some_and(|m| m.len() > MAX_DISRUPTED_PODS)
    {
        return Err(ApiError::new(
            403,
            "Forbidden",
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(too_many_requests(
            VIOLATES,
            format!(
                "The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently"
            ),
        ));
    }
    if dry {
        return Ok(());
    }
    pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if !pdb["status"]["disruptedPods"].is_object() {
        pdb["status"]["disruptedPods"] = json!({});
    }
    pdb["status"]["disruptedPods"][name] = json!(objects::now_rfc3339());
    match ctx
        .state
        .store
        .update(
            &pdbs_rt.key(Some(ns), &pdb_name),
            objects::to_stored(&pdb),
            rev,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(pdbs_rt, &pdb_name)),
        Err(e) => Err(e.into()),
    }
}
