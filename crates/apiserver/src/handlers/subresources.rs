//! The subresources with verbs of their own: `scale`, `binding` and
//! `serviceaccounts/<name>/token`.

use super::*;

/// The `autoscaling/v1 Scale` view of a workload, read where its type
/// keeps replicas and selector ([`crate::strategy::ScaleSpec`]).
pub(super) fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let spec = rt.strategy.scale();
    let selector = match &spec.label_selector {
        Some(path) => crate::jsonpath::first(obj, path)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => obj["spec"]["selector"]["matchLabels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
    };
    let int_at = |path: &str| crate::jsonpath::first(obj, path).and_then(Value::as_i64);
    // Built-in workloads default replicas to 1; a custom type without the
    // field has none.
    let default_replicas = if spec.label_selector.is_none() && rt.defined_by.is_none() {
        1
    } else {
        0
    };
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": int_at(&spec.spec_replicas).unwrap_or(default_replicas)},
        "status": {"replicas": int_at(&spec.status_replicas).unwrap_or(0), "selector": selector},
    })
}

/// Sets the value at a simple `.a.b` path, making the objects on the way.
fn set_at(obj: &mut Value, path: &str, value: Value) {
    let mut cur = obj;
    let steps: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    for (i, step) in steps.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i == steps.len() - 1 {
            cur[*step] = value;
            return;
        }
        cur = &mut cur[*step];
    }
}

/// GET/PUT/PATCH of the `scale` subresource: reads or sets spec.replicas.
pub(super) async fn scale(
    ctx: &Ctx<'_>,
    method: &Method,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    for _ in 0..5 {
        let (old, rev) = read_object(ctx, &name).await?;
        let current = scale_of(rt, &old);
        if method == Method::GET {
            return Ok(json_response(StatusCode::OK, &current));
        }
        let wanted = if method == Method::PUT {
            let ty = crate::request::body_type(content_type.as_deref())
                .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
            decode_body(body, ty)?
        } else {
            let ty = crate::request::body_type(content_type.as_deref())
                .ok_or_else(|| ApiError::unsupported_media("application/merge-patch+json"))?;
            apply_patch(ctx, ty, &current, body)?
        };
        // The Scale must decode as one: a replicas beyond int32 would be
        // stored into a workload no client could read back.
        schema::typed::<k8s_openapi::api::autoscaling::v1::Scale>(&wanted).map_err(|e| {
            ApiError::bad_request(format!(
                "Scale in version \"v1\" cannot be handled as a Scale: {e}"
            ))
        })?;
        if let Some(want) = expected_rv(&wanted)?
            && want != rev
        {
            return Err(ApiError::conflict(rt, &name));
        }
        let replicas = wanted["spec"]["replicas"].as_i64().ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                &name,
                rt,
                &[("spec.replicas".into(), "Required value".into(), "".into())],
            )
        })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                &name,
                rt,
                &[(
                    "spec.replicas".into(),
                    "Invalid value".into(),
                    format!("{replicas}: must be greater than or equal to 0"),
                )],
            ));
        }
        let mut new = old.clone();
        set_at(
            &mut new,
            &rt.strategy.scale().spec_replicas,
            json!(replicas),
        );
        objects::prepare_update(rt, &old, &mut new, false);
        match store_update(ctx, &name, new, rev).await {
            Ok(stored) => return Ok(json_response(StatusCode::OK, &scale_of(rt, &stored))),
            Err(e) if e.reason == "Conflict" && expected_rv(&wanted)?.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(rt, &name))
}

/// `serviceaccounts/<name>/token`: a TokenRequest in, the same with its
/// token out (nothing is stored).
pub(super) async fn token_request(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let ty = crate::request::body_type(content_type.as_deref())
        .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
    let request = decode_body(body, ty)?;
    let name = ctx.path.name.clone().unwrap_or_default();
    let ns = ctx.ns().unwrap_or("default");
    let answer = crate::serviceaccounts::token_request(
        ctx.state,
        ns,
        &name,
        ctx.node_scope.as_deref(),
        request,
    )
    .await?;
    Ok(json_response(StatusCode::CREATED, &answer))
}

pub(super) async fn bind(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    let ty = crate::request::body_type(content_type.as_deref())
        .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
    let binding = decode_body(body, ty)?;
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("Binding \"{name}\" is invalid: target.name: Required value"),
        ));
    }
    let (old, rev) = read_object(ctx, &name).await?;
    if let Some(current) = old["spec"]["nodeName"].as_str().filter(|s| !s.is_empty()) {
        return Err(ApiError::conflict_msg(
            rt,
            &name,
            &format!("pod {name} is already assigned to node \"{current}\""),
        ));
    }
    if old["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::conflict_msg(
            rt,
            &name,
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    let mut new = old.clone();
    new["spec"]["nodeName"] = json!(node);
    let mut conditions: Vec<Value> = new["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now_rfc3339()}));
    new["status"]["conditions"] = Value::Array(conditions);
    store_update(ctx, &name, new, rev).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &success_status(rt, &name),
    ))
}
