//! `patch`: JSON, merge, strategic-merge and apply (server-side apply)
//! patches, with `fieldValidation` over what the patch added.

use super::*;

/// A patch whose result the type's schema refuses: upstream's 422 with the
/// field `patch` and the patched object as the value.
pub(super) fn patch_invalid(patched: &Value, msg: &str) -> ApiError {
    let json = serde_json::to_string(patched).unwrap_or_default();
    let detail = format!("{}: {msg}", schema::go_quote(&json));
    ApiError::new(
        422,
        "Invalid",
        format!(" \"\" is invalid: patch: Invalid value: {detail}"),
    )
    .with_causes(&[("patch", "Invalid value", &detail)])
}

/// The typed check of an apply configuration, as server-side apply's
/// conversion to a typed object does it: a wrong type or a field the
/// schema does not declare refuses the apply, whatever `fieldValidation`
/// says.
pub(super) fn check_apply_config(rt: &ResourceType, applied: &Value) -> ApiResult<()> {
    let typed_err = |msg: String| {
        ApiError::new(
            422,
            "Invalid",
            format!(
                "failed to create typed patch object ({}, Kind={}): {msg}",
                rt.api_version(),
                rt.kind
            ),
        )
    };
    let unknown = rt
        .strategy
        .unknown_fields(rt, applied)
        .map_err(|e| typed_err(format!(".{e}")))?;
    match unknown.first() {
        None => Ok(()),
        Some(p) => Err(typed_err(format!(".{p}: field not declared in schema"))),
    }
}

/// A JSON patch's own operations under `fieldValidation`: fields other
/// than `op`, `path`, `from` and `value`, and fields given twice.
pub(super) fn json_patch_findings(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(body) {
        for op in &ops {
            for k in op.as_object().into_iter().flat_map(|m| m.keys()) {
                if !matches!(k.as_str(), "op" | "path" | "from" | "value") {
                    out.push(format!("json patch unknown field {}", schema::go_quote(k)));
                }
            }
        }
    }
    for dup in schema::duplicate_fields(body) {
        if let [schema::Step::Index(_), schema::Step::Key(k)] = dup.0.as_slice() {
            out.push(format!(
                "json patch duplicate field {}",
                schema::go_quote(k)
            ));
        }
    }
    out
}

pub(super) fn apply_patch(
    ctx: &Ctx<'_>,
    ty: BodyType,
    current: &Value,
    patch_body: &[u8],
) -> ApiResult<Value> {
    let rt = ctx.rt();
    let patch_err = |e: String| ApiError::new(422, "Invalid", e);
    match ty {
        BodyType::JsonPatch => {
            let p: json_patch::Patch = serde_json::from_slice(patch_body)
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &p)
                .map_err(|e| patch_err(format!("the JSON patch could not be applied: {e}")))?;
            Ok(doc)
        }
        BodyType::MergePatch => {
            let p: Value = decode_body(patch_body, BodyType::Json)?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        BodyType::StrategicMergePatch if !rt.strategy.strategic_merge_patch() => {
            Err(ApiError::unsupported_media(
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ))
        }
        BodyType::StrategicMergePatch => {
            let p: Value = decode_body(patch_body, BodyType::Json)?;
            let schema =
                rke2_apimachinery::strategic_merge::builtin_schema(&rt.api_version(), &rt.kind);
            rke2_apimachinery::strategic_merge::apply(current, &p, &schema).map_err(|e| {
                patch_err(format!(
                    "the strategic merge patch could not be applied: {e}"
                ))
            })
        }
        BodyType::ApplyPatch => {
            let applied = decode_body(patch_body, BodyType::ApplyPatch)?;
            if ctx.path.subresource.as_deref() != Some("scale") {
                check_apply_config(rt, &applied)?;
            }
            let schema = ApplySchema {
                rt,
                builtin: rke2_apimachinery::strategic_merge::builtin_schema(
                    &rt.api_version(),
                    &rt.kind,
                ),
            };
            let mut merged = rke2_apimachinery::strategic_merge::apply(current, &applied, &schema)
                .map_err(|e| {
                    patch_err(format!("the apply configuration could not be merged: {e}"))
                })?;
            crate::ssa::apply_ownership(
                current,
                &mut merged,
                &applied,
                ctx.query.get("fieldManager").unwrap_or("unknown"),
                &rt.api_version(),
                ctx.query.flag("force"),
                &objects::now_rfc3339(),
            )?;
            Ok(merged)
        }
        _ => Err(ApiError::unsupported_media(
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
        )),
    }
}

/// The list strategies of server-side apply: the type's own (a CRD's list
/// types and map keys), else the built-in patch strategies.
struct ApplySchema<'a> {
    rt: &'a ResourceType,
    builtin: rke2_apimachinery::strategic_merge::BuiltinSchema,
}

impl rke2_apimachinery::strategic_merge::MergeSchema for ApplySchema<'_> {
    fn list_strategy(&self, path: &[&str]) -> rke2_apimachinery::strategic_merge::ListStrategy {
        self.rt
            .strategy
            .apply_list_strategy(path)
            .unwrap_or_else(|| self.builtin.list_strategy(path))
    }
}

pub(super) async fn patch(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    let ty = crate::request::body_type(content_type.as_deref())
        .filter(|t| matches!(t, BodyType::JsonPatch | BodyType::MergePatch | BodyType::StrategicMergePatch | BodyType::ApplyPatch))
        .ok_or_else(|| ApiError::unsupported_media("application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"))?;
    if ty == BodyType::ApplyPatch && ctx.query.get("fieldManager").unwrap_or("").is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    if ty != BodyType::ApplyPatch && ctx.query.get("force").is_some() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    let mode = ctx.write_options("PatchOptions")?;
    // What the patch document itself holds twice (or, for a JSON patch,
    // what its operations hold that they should not).
    let (duplicate, other) = match (mode, ty) {
        (FieldValidation::Ignore, _) => (Vec::new(), Vec::new()),
        (_, BodyType::JsonPatch) => (Vec::new(), json_patch_findings(body)),
        (_, BodyType::MergePatch | BodyType::StrategicMergePatch) => {
            (schema::duplicate_fields(body), Vec::new())
        }
        (_, _) => (
            Vec::new(),
            crate::request::yaml_duplicate_keys(body)
                .into_iter()
                .collect(),
        ),
    };
    if ty == BodyType::ApplyPatch && mode == FieldValidation::Strict && !other.is_empty() {
        return Err(ApiError::bad_request(format!(
            "error strict decoding YAML: {}",
            other.join(", ")
        )));
    }
    // Only a resourceVersion the client put in the patch is a
    // precondition; the patched object always carries the stored one.
    let precondition = match ty {
        BodyType::JsonPatch => None,
        _ => decode_body(body, ty)
            .ok()
            .as_ref()
            .map(expected_rv)
            .transpose()?
            .flatten(),
    };
    // A patch without a resourceVersion precondition is retried on
    // conflict, as kube-apiserver does. The first attempt starts from the
    // watch cache's copy; a stale copy fails the revision compare and the
    // retry reads etcd.
    for attempt in 0..5 {
        // A retry reports the fields of its own attempt only.
        ctx.warnings.take();
        let cached = match attempt {
            0 => cached_object(ctx, &name, precondition),
            _ => None,
        };
        let read = match cached {
            Some(x) => Ok(x),
            None => read_object(ctx, &name).await,
        };
        let (old, rev) = match read {
            Ok(x) => x,
            Err(e)
                if e.code == 404
                    && ty == BodyType::ApplyPatch
                    && ctx.path.subresource.is_none() =>
            {
                let mut obj = decode_body(body, BodyType::ApplyPatch)?;
                check_apply_config(rt, &obj)?;
                objects::check_type(rt, &mut obj)?;
                if name_of(&obj) != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        name_of(&obj)
                    )));
                }
                let applied = obj.clone();
                crate::ssa::apply_ownership(
                    &json!({"metadata": {}}),
                    &mut obj,
                    &applied,
                    ctx.query.get("fieldManager").unwrap_or("unknown"),
                    &rt.api_version(),
                    ctx.query.flag("force"),
                    &objects::now_rfc3339(),
                )?;
                let created = create_object(ctx, obj).await?;
                return Ok(json_response(
                    StatusCode::CREATED,
                    &shape_one(rt, created, ctx.answer),
                ));
            }
            Err(e) => return Err(e),
        };
        check_node_scope(ctx, &old, "patch")?;
        let mut new = apply_patch(ctx, ty, &old, body)?;
        // The patched object must decode as the type (upstream decodes it
        // into the Go struct); fields it does not know are new ones from
        // this patch (reported by fieldValidation) or old ones stored
        // before they were checked (dropped silently).
        let unknown = rt
            .strategy
            .unknown_fields(rt, &new)
            .map_err(|e| patch_invalid(&new, &e.to_string()))?;
        let (fresh, stale): (Vec<_>, Vec<_>) =
            unknown.into_iter().partition(|p| p.get(&old).is_none());
        let findings = StrictFindings {
            unknown: fresh,
            duplicate: duplicate.clone(),
            other: other.clone(),
        };
        let patched_json = new.clone();
        ctx.settle_fields(&mut new, mode, findings, |msg| {
            patch_invalid(&patched_json, &msg)
        })?;
        for p in &stale {
            p.remove(&mut new);
        }
        if name_of(&new) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new)
            )));
        }
        keep_identity(ctx, &old, &mut new)?;
        if let Some(want) = precondition
            && want != rev
        {
            return Err(ApiError::conflict(rt, &name));
        }
        objects::check_type(rt, &mut new)?;
        prepare_for_path(ctx, &old, &mut new).await?;
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
        match store_update(ctx, &name, new, rev).await {
            Ok(stored) => {
                return Ok(json_response(
                    StatusCode::OK,
                    &shape_one(rt, stored, ctx.answer),
                ));
            }
            Err(e) if e.reason == "Conflict" && precondition.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(rt, &name))
}
