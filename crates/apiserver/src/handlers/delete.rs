//! `delete` and `deletecollection`: preconditions, propagation policy
//! (garbage-collector finalizers), graceful and custom deletion.

use super::*;

/// Deletes an object; without a resourceVersion precondition a write that
/// lands between our read and our delete is retried, as kube-apiserver does.
pub(super) async fn delete(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let mut last = None;
    for attempt in 0..5 {
        match delete_once(ctx, content_type.clone(), body, attempt).await {
            Err(e) if e.reason == "Conflict" && e.message.contains("has been modified") => {
                let preconditioned = !body.is_empty()
                    && crate::request::body_type(content_type.as_deref())
                        .and_then(|ty| decode_body(body, ty).ok())
                        .is_some_and(|o| o["preconditions"]["resourceVersion"].is_string());
                if preconditioned {
                    return Err(e);
                }
                last = Some(e);
            }
            other => return other,
        }
    }
    Err(last.expect("loop ran"))
}

pub(super) async fn delete_once(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
    attempt: usize,
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    let opts: Value = if body.is_empty() {
        json!({})
    } else {
        let ty = crate::request::body_type(content_type.as_deref())
            .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
        decode_body(body, ty)?
    };
    // The first attempt of a delete without preconditions decides on the
    // watch cache's copy, saving an etcd read: every write below compares
    // the revision, so a stale copy only costs a retry from etcd.
    // Preconditions and a node's scope are checked against etcd, where a
    // stale copy would fail them falsely.
    let preconditioned = opts["preconditions"].is_object();
    let cached = (attempt == 0 && !preconditioned && ctx.node_scope.is_none())
        .then(|| cached_object(ctx, &name, None))
        .flatten();
    let (old, rev) = match cached {
        Some(found) => found,
        None => read_object(ctx, &name).await?,
    };
    check_node_scope(ctx, &old, "delete")?;
    if let Some(uid) = opts["preconditions"]["uid"].as_str()
        && old["metadata"]["uid"] != uid
    {
        return Err(ApiError::conflict_msg(
            rt,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old["metadata"]["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    if let Some(want) = opts["preconditions"]["resourceVersion"].as_str()
        && want != rev.to_string()
    {
        return Err(ApiError::conflict_msg(
            rt,
            &name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
            ),
        ));
    }
    // Admission: mutating and validating webhooks on DELETE (crate::admission).
    crate::admission::admit_delete(ctx, &old).await?;
    rt.strategy.admit_delete(&old)?;
    // Foreground and orphan propagation are carried out by the garbage
    // collector: the owner stays, marked for deletion, with a finalizer the
    // collector removes once dependents are deleted (or orphaned).
    let policy = opts["propagationPolicy"]
        .as_str()
        .or_else(|| ctx.query.get("propagationPolicy"))
        .map(str::to_string)
        .or_else(|| match opts["orphanDependents"].as_bool() {
            Some(true) => Some("Orphan".into()),
            Some(false) => Some("Background".into()),
            None => None,
        });
    let gc_finalizer = match policy.as_deref() {
        None | Some("Background") => None,
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        Some(other) => {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            ));
        }
    };
    let mut old = old;
    let custom_delete = rt.strategy.custom_delete();
    if let Some(f) = gc_finalizer
        && custom_delete.is_none()
        && !ctx.dry_run()
    {
        let list = old["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !list.iter().any(|x| x == f) {
            let mut l = list;
            l.push(json!(f));
            old["metadata"]["finalizers"] = Value::Array(l);
        }
    }
    let has_finalizers = old["metadata"]["finalizers"]
        .as_array()
        .map(|a| !a.is_empty())
        .unwrap_or(false);
    if let Some(delete) = custom_delete {
        let obj = delete(ctx.state, old, rev).await?;
        return Ok(json_response(StatusCode::OK, &obj));
    }
    if ctx.dry_run() {
        return Ok(json_response(StatusCode::OK, &old));
    }
    if let Some(grace) = rt
        .strategy
        .grace_period(&old, &opts, ctx.query.get("gracePeriodSeconds"))
    {
        // Graceful deletion: the object (a pod) stays, marked, until its
        // node has stopped its containers and deletes it with a zero
        // grace period.
        let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if old["metadata"]["deletionTimestamp"].is_string() && current.is_some_and(|c| c <= grace) {
            return Ok(json_response(StatusCode::OK, &old));
        }
        let mut new = old.clone();
        let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
        new["metadata"]["deletionTimestamp"] = json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        let stored = store_update(ctx, &name, new, rev).await?;
        return Ok(json_response(StatusCode::OK, &stored));
    }
    if has_finalizers {
        if old["metadata"]["deletionTimestamp"].is_string() && gc_finalizer.is_none() {
            if old["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                > 0
            {
                // The graceful part is over; finalizers still hold it.
                let mut new = old.clone();
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                let stored = store_update(ctx, &name, new, rev).await?;
                return Ok(json_response(StatusCode::OK, &stored));
            }
            return Ok(json_response(StatusCode::OK, &old));
        }
        let mut new = old.clone();
        if !new["metadata"]["deletionTimestamp"].is_string() {
            new["metadata"]["deletionTimestamp"] = json!(objects::now_rfc3339());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        let stored = store_update(ctx, &name, new, rev).await?;
        let code = if gc_finalizer == Some("foregroundDeletion") {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        return Ok(json_response(code, &stored));
    }
    match ctx.state.store.delete(&ctx.key(&name), rev).await {
        Ok(_) => {
            rt.strategy.release(ctx.state, &old).await;
            Ok(json_response(StatusCode::OK, &old))
        }
        Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, &name)),
        Err(StoreError::NotFound) => Err(ApiError::not_found(rt, &name)),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn delete_collection(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let filters = Filters::from_query(rt, &ctx.query)?;
    let mut q = ctx.query.clone();
    q.remove("limit");
    q.remove("continue");
    let listing = Ctx {
        state: ctx.state,
        path: ctx.path.clone(),
        query: q,
        answer: ctx.answer,
        node_scope: ctx.node_scope.clone(),
        identity: ctx.identity.clone(),
        warnings: Warnings::default(),
    };
    let (items, meta) = list_objects(&listing, &filters).await?;
    let mut deleted = Vec::new();
    for obj in items {
        let name = name_of(&obj).to_string();
        let mut path = ctx.path.clone();
        path.name = Some(name);
        if rt.namespaced {
            path.namespace = obj["metadata"]["namespace"].as_str().map(str::to_string);
        }
        let one = Ctx {
            state: ctx.state,
            path,
            query: ctx.query.clone(),
            answer: ctx.answer,
            node_scope: ctx.node_scope.clone(),
            identity: ctx.identity.clone(),
            warnings: Warnings::default(),
        };
        // Each object is deleted with the collection's DeleteOptions, as
        // upstream's DeleteCollection does.
        match delete(&one, content_type.clone(), body).await {
            Ok(_) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": meta, "items": deleted}),
    ))
}
