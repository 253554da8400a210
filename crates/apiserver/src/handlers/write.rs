//! Writes: `create` and `update` (whole objects, and the `status`,
//! `finalize` and `approval` paths), the checks every write shares and the
//! revision-compared store calls.

use super::*;

/// Decodes a create or update body and checks it against the type's
/// schema: a value of the wrong type is a 400 as upstream's decoder gives,
/// unknown and duplicate fields go by `fieldValidation`.
pub(super) fn read_body(
    ctx: &Ctx<'_>,
    content_type: Option<&str>,
    body: &[u8],
    options_kind: &str,
) -> ApiResult<Value> {
    let rt = ctx.rt();
    let ty = crate::request::body_type(content_type).ok_or_else(|| {
        ApiError::unsupported_media(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf",
        )
    })?;
    if !matches!(ty, BodyType::Json | BodyType::Yaml | BodyType::Protobuf) {
        return Err(ApiError::unsupported_media(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf",
        ));
    }
    let mode = ctx.write_options(options_kind)?;
    let mut obj = decode_body(body, ty)?;
    objects::check_type(rt, &mut obj)?;
    let cannot_handle = |msg: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {msg}",
            kind = rt.kind,
            v = rt.version
        ))
    };
    let unknown = rt
        .strategy
        .unknown_fields(rt, &obj)
        .map_err(|e| cannot_handle(e.to_string()))?;
    let (duplicate, other) = match (mode, ty) {
        (FieldValidation::Ignore, _) | (_, BodyType::Protobuf) => (Vec::new(), Vec::new()),
        _ => (
            schema::duplicate_fields(body),
            crate::request::yaml_duplicate_keys(body)
                .into_iter()
                .collect(),
        ),
    };
    let findings = StrictFindings {
        unknown,
        duplicate,
        other,
    };
    ctx.settle_fields(&mut obj, mode, findings, cannot_handle)?;
    Ok(obj)
}

impl Ctx<'_> {
    /// The write options every create, update and patch carries:
    /// `fieldManager` (at most 128 printable characters, as upstream's
    /// `ValidateFieldManager`) and `fieldValidation`.
    pub(super) fn write_options(&self, options_kind: &str) -> ApiResult<FieldValidation> {
        if let Some(manager) = self.query.get("fieldManager") {
            let causes = objects::field_manager_problems(manager, "fieldManager");
            if !causes.is_empty() {
                return Err(objects::options_invalid(options_kind, &causes));
            }
        }
        FieldValidation::parse(self.query.get("fieldValidation"), options_kind)
    }

    /// Applies `fieldValidation` to what a write's field check found:
    /// `Strict` refuses (worded by `refuse`), `Warn` adds a warning per
    /// field; unknown fields are dropped from `obj` either way, as the
    /// typed decode upstream drops them.
    pub(super) fn settle_fields(
        &self,
        obj: &mut Value,
        mode: FieldValidation,
        findings: StrictFindings,
        refuse: impl FnOnce(String) -> ApiError,
    ) -> ApiResult<()> {
        if findings.is_empty() {
            return Ok(());
        }
        match mode {
            FieldValidation::Strict => return Err(refuse(findings.strict_error())),
            FieldValidation::Warn => findings
                .messages()
                .into_iter()
                .for_each(|m| self.warnings.push(m)),
            FieldValidation::Ignore => {}
        }
        for path in &findings.unknown {
            path.remove(obj);
        }
        Ok(())
    }
}

pub(super) async fn ensure_namespace(ctx: &Ctx<'_>) -> ApiResult<()> {
    let Some(ns) = ctx.ns() else { return Ok(()) };
    let nsrt = registry::find("", "v1", "namespaces").expect("namespaces registered");
    let key = nsrt.key(None, ns);
    // An active namespace in the cache is enough, as in kube-apiserver's
    // NamespaceLifecycle admission (a cache that lags a deletion lets a
    // create through; the namespace controller deletes it with the rest).
    // Anything else is checked against etcd: the cache may not have seen
    // a namespace created a moment ago.
    if let Some((obj, _)) = ctx.state.caches.running(nsrt).and_then(|c| c.get(&key))
        && !obj["metadata"]["deletionTimestamp"].is_string()
    {
        return Ok(());
    }
    match ctx.state.store.get(&key).await? {
        None => Err(ApiError::not_found(nsrt, ns)),
        Some(kv) => {
            let obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if obj["metadata"]["deletionTimestamp"].is_string() {
                Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        ctx.rt().qualified(),
                        ""
                    ),
                ))
            } else {
                Ok(())
            }
        }
    }
}

pub(super) async fn create(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let obj = read_body(ctx, content_type.as_deref(), body, "CreateOptions")?;
    let created = create_object(ctx, obj).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &shape_one(rt, created, ctx.answer),
    ))
}

/// A node may only touch its own Node and Lease, and pods bound to it
/// (NodeRestriction, in [`crate::node_restriction`]).
pub(super) fn check_node_scope(ctx: &Ctx<'_>, obj: &Value, verb: &str) -> ApiResult<()> {
    crate::node_restriction::check_scope(ctx.node_scope.as_deref(), ctx.rt(), obj, verb)
}

/// How many names a create with `generateName` tries before it answers
/// 409 (upstream's RetryGenerateName, GA in 1.32, makes eight attempts).
pub(super) const GENERATE_NAME_ATTEMPTS: usize = 8;

/// Validates, defaults and stores a new object; returns it as stored.
pub(super) async fn create_object(ctx: &Ctx<'_>, mut obj: Value) -> ApiResult<Value> {
    let rt = ctx.rt();
    check_node_scope(ctx, &obj, "create")?;
    let generated = obj["metadata"]["name"].as_str().unwrap_or("").is_empty()
        && obj["metadata"]["generateName"].is_string();
    objects::prepare_create(rt, &mut obj, ctx.ns())?;
    rt.strategy.prepare_create(&mut obj, &ctx.identity);
    // Admission: mutating webhooks (crate::admission).
    crate::admission::mutate(ctx, crate::admission::Operation::Create, None, &mut obj).await?;
    objects::validate(rt, &obj)?;
    rt.strategy.admit_create(rt, &obj)?;
    crate::rbac::admit_write(ctx.state, &ctx.identity, rt, &obj).await?;
    ensure_namespace(ctx).await?;
    rt.strategy.admit_create_with(ctx.state, &mut obj).await?;
    crate::quota::admit_limits(ctx.state, rt, None, &mut obj).await?;
    crate::pod_security::admit(ctx, None, &obj).await?;
    // Admission: validating webhooks (crate::admission).
    crate::admission::validate(ctx, crate::admission::Operation::Create, None, Some(&obj)).await?;
    crate::quota::admit_quota(ctx.state, rt, None, &obj, ctx.dry_run()).await?;
    if ctx.dry_run() {
        return Ok(obj);
    }
    to_storage(ctx, &mut obj).await?;
    let claims = rt.strategy.allocate(ctx.state, &mut obj).await?;
    let stored = store_new(&mut obj, generated, |name, bytes| {
        let key = ctx.key(name);
        async move { ctx.state.store.create(&key, bytes).await }
    })
    .await;
    match stored {
        Ok(rev) => {
            objects::decorate(rt, &mut obj, rev);
            to_served(ctx, std::slice::from_mut(&mut obj)).await?;
            Ok(obj)
        }
        Err(e) => {
            crate::allocator::release(ctx.state, &claims).await;
            Err(match e {
                StoreError::AlreadyExists => ApiError::already_exists(rt, name_of(&obj)),
                other => other.into(),
            })
        }
    }
}

/// Stores a new object through `create` (name, bytes); a generated name
/// that collides is drawn again, up to [`GENERATE_NAME_ATTEMPTS`] names:
/// the client asked for any name, not this one.
pub(super) async fn store_new<F, Fut>(
    obj: &mut Value,
    generated: bool,
    create: F,
) -> Result<i64, StoreError>
where
    F: Fn(&str, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<i64, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match create(name_of(obj), objects::to_stored(obj)).await {
            Err(StoreError::AlreadyExists) if generated && attempt < GENERATE_NAME_ATTEMPTS => {
                attempt += 1;
                objects::generate_name(obj);
            }
            other => return other,
        }
    }
}

/// Writes `new` over the object at revision `rev`, finishing a pending
/// deletion once the last finalizer is gone.
pub(super) async fn store_update(
    ctx: &Ctx<'_>,
    name: &str,
    mut new: Value,
    rev: i64,
) -> ApiResult<Value> {
    let rt = ctx.rt();
    objects::validate(rt, &new)?;
    crate::rbac::admit_write(ctx.state, &ctx.identity, rt, &new).await?;
    if ctx.dry_run() {
        return Ok(new);
    }
    let finalizers_empty = new["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.is_empty())
        .unwrap_or(true);
    let key = ctx.key(name);
    to_storage(ctx, &mut new).await?;
    // A graceful deletion still running (a pod whose node has not yet
    // stopped its containers) keeps the object until the grace is 0.
    let grace_pending = new["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(0)
        > 0;
    if new["metadata"]["deletionTimestamp"].is_string() && finalizers_empty && !grace_pending {
        return match ctx.state.store.delete(&key, rev).await {
            Ok(r) => {
                rt.strategy.release(ctx.state, &new).await;
                objects::decorate(rt, &mut new, r);
                to_served(ctx, std::slice::from_mut(&mut new)).await?;
                Ok(new)
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, name)),
            Err(StoreError::NotFound) => Err(ApiError::not_found(rt, name)),
            Err(e) => Err(e.into()),
        };
    }
    match ctx
        .state
        .store
        .update(&key, objects::to_stored(&new), rev)
        .await
    {
        Ok(r) => {
            objects::decorate(rt, &mut new, r);
            to_served(ctx, std::slice::from_mut(&mut new)).await?;
            Ok(new)
        }
        Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, name)),
        Err(StoreError::NotFound) => Err(ApiError::not_found(rt, name)),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn expected_rv(obj: &Value) -> ApiResult<Option<i64>> {
    match obj["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}"))),
    }
}

pub(super) async fn update(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    let mut new = read_body(ctx, content_type.as_deref(), body, "UpdateOptions")?;
    let body_name = name_of(&new).to_string();
    if body_name.is_empty() {
        new["metadata"]["name"] = json!(name);
    } else if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let want = expected_rv(&new)?;
    let (old, rev) = match want.and_then(|w| cached_object(ctx, &name, Some(w))) {
        Some(x) => x,
        None => read_object(ctx, &name).await?,
    };
    check_node_scope(ctx, &old, "update")?;
    if let Some(want) = want
        && want != rev
    {
        return Err(ApiError::conflict(rt, &name));
    }
    keep_identity(ctx, &old, &mut new)?;
    if ctx.path.subresource.as_deref() == Some("finalize") {
        let finalizers = new["spec"]["finalizers"].clone();
        new = old.clone();
        new["spec"]["finalizers"] = finalizers;
    } else {
        prepare_for_path(ctx, &old, &mut new).await?;
    }
    // Admission: mutating webhooks; what they changed is prepared again (crate::admission).
    if crate::admission::mutate(
        ctx,
        crate::admission::Operation::Update,
        Some(&old),
        &mut new,
    )
    .await?
    {
        prepare_for_path(ctx, &old, &mut new).await?;
    }
    crate::node_restriction::admit_update(ctx.node_scope.as_deref(), rt, &old, &new)?;
    crate::pod_security::admit(ctx, Some(&old), &new).await?;
    // Admission: validating webhooks (crate::admission).
    crate::admission::validate(
        ctx,
        crate::admission::Operation::Update,
        Some(&old),
        Some(&new),
    )
    .await?;
    admit_quota_update(ctx, &old, &mut new).await?;
    let stored = store_update(ctx, &name, new, rev).await?;
    Ok(json_response(
        StatusCode::OK,
        &shape_one(rt, stored, ctx.answer),
    ))
}

/// LimitRanger and ResourceQuota admission of an update of the object
/// itself (a claim's limits; a Service or claim that grows is charged).
pub(super) async fn admit_quota_update(
    ctx: &Ctx<'_>,
    old: &Value,
    new: &mut Value,
) -> ApiResult<()> {
    if ctx.path.subresource.as_deref() == Some("resize") {
        // LimitRanger validates (never defaults) a resize, and quota
        // charges what it adds (upstream's pod evaluator handles the
        // `resize` subresource).
        crate::quota::admit_pod_resize(ctx.state, ctx.rt(), old, new, ctx.dry_run()).await?;
        return Ok(());
    }
    if ctx.path.subresource.is_some() {
        return Ok(());
    }
    crate::quota::admit_limits(ctx.state, ctx.rt(), Some(old), new).await?;
    crate::quota::admit_quota(ctx.state, ctx.rt(), Some(old), new, ctx.dry_run()).await
}

/// Carries the server-owned fields of `old` into an update through the
/// request's path (the object or a subresource), as the type's strategy
/// does it.
pub(super) async fn prepare_for_path(ctx: &Ctx<'_>, old: &Value, new: &mut Value) -> ApiResult<()> {
    let at = crate::strategy::UpdateAt {
        rt: ctx.rt(),
        state: ctx.state,
        identity: &ctx.identity,
        subresource: ctx.path.subresource.as_deref(),
    };
    ctx.rt().strategy.prepare_update(at, old, new).await
}

/// The identity of an object stays what it is (upstream's
/// `EnsureObjectNamespaceMatchesRequestNamespace` and the immutable
/// `metadata.uid`): a namespace other than the request's is a 400, an
/// empty one is the request's, a cluster-scoped object has none; a uid
/// may be omitted but not changed. `creationTimestamp` and the other
/// server-owned fields are carried over by `prepare_update`.
pub(super) fn keep_identity(ctx: &Ctx<'_>, old: &Value, new: &mut Value) -> ApiResult<()> {
    let rt = ctx.rt();
    if rt.namespaced {
        let want = old["metadata"]["namespace"].clone();
        match new["metadata"]["namespace"].as_str() {
            None | Some("") => new["metadata"]["namespace"] = want,
            Some(ns) if Some(ns) == want.as_str() => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    match (
        new["metadata"]["uid"].as_str(),
        old["metadata"]["uid"].as_str(),
    ) {
        (None | Some(""), _) => Ok(()),
        (Some(n), Some(o)) if n == o => Ok(()),
        (Some(n), _) => Err(ApiError::invalid(
            &rt.kind,
            name_of(old),
            rt,
            &[(
                "metadata.uid".into(),
                "Invalid value".into(),
                format!("{}: field is immutable", schema::go_quote(n)),
            )],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A create whose generated names collide draws new ones, and gives
    /// up with the collision after eight names; a given name is never
    /// changed.
    #[tokio::test]
    async fn generated_names_are_drawn_again_on_collision() {
        for (taken, generated, want_ok, want_tries) in [
            (3, true, true, 4),
            (7, true, true, 8),
            (8, true, false, 8),
            (1, false, false, 1),
        ] {
            let mut obj = json!({"metadata": {"name": "", "generateName": "web-"}});
            if generated {
                objects::generate_name(&mut obj);
            } else {
                obj["metadata"]["name"] = json!("fixed");
            }
            let tried = std::sync::Mutex::new(Vec::<String>::new());
            let r = store_new(&mut obj, generated, |name, bytes| {
                let stored: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(
                    stored["metadata"]["name"], name,
                    "bytes carry the name tried"
                );
                let mut t = tried.lock().unwrap();
                t.push(name.to_string());
                let n = t.len();
                async move {
                    if n <= taken {
                        Err(StoreError::AlreadyExists)
                    } else {
                        Ok(7)
                    }
                }
            })
            .await;
            let tried = tried.into_inner().unwrap();
            assert_eq!(r.is_ok(), want_ok, "{taken} taken: {r:?}");
            assert_eq!(tried.len(), want_tries, "{taken} taken: {tried:?}");
            let distinct: std::collections::HashSet<_> = tried.iter().collect();
            assert_eq!(
                distinct.len(),
                tried.len(),
                "a new name each time: {tried:?}"
            );
            if generated {
                assert!(tried.iter().all(|n| n.starts_with("web-") && n.len() == 9));
            }
            assert_eq!(obj["metadata"]["name"], json!(tried.last().unwrap()));
        }
    }
}
