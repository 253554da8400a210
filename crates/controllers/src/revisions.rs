//! ControllerRevisions (`apps/v1`): the history of a StatefulSet's or
//! DaemonSet's pod template, as kube-controller-manager keeps it
//! (`pkg/controller/history`) and as `kubectl rollout history|undo` reads
//! it.
//!
//! A revision's `data` is the strategic merge patch that puts its template
//! back: `{"spec":{"template":{…,"$patch":"replace"}}}` (kubectl applies
//! exactly that on `rollout undo`). Revisions are named `<owner>-<hash>`,
//! carry the owner's selector labels plus `controller.kubernetes.io/hash`,
//! and a controller ownerReference. When the owner's template goes back to
//! an older revision's, that revision is reused and renumbered as the
//! newest (upstream's dedup), so `rollout history` lists it last.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

/// Label with the revision's hash (upstream's `ControllerRevisionHashLabel`).
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// The `data` of a revision of `template`.
pub fn patch_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision holds (`None` if its data is not a
/// template patch).
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0["spec"]["template"].clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// The hash upstream names a StatefulSet revision with
/// (`history.HashControllerRevision`): FNV-1a (32 bits) over the data and
/// the collision count, written with the "safe" alphabet that never
/// spells words.
pub fn hash(data: &Value, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u32;
            h = h.wrapping_mul(0x01000193);
        }
    };
    feed(&serde_json::to_vec(data).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    safe_encode(&h.to_string())
}

/// Upstream's `rand.SafeEncodeString`: each byte mapped onto an alphabet
/// without vowels and look-alike digits.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// The revisions `owner_uid` controls among those matching `selector`
/// (a label selector string), oldest revision first.
pub async fn list(
    api: &Api<ControllerRevision>,
    selector: &str,
    owner_uid: &str,
) -> Result<Vec<ControllerRevision>, kube::Error> {
    let mut revs: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == owner_uid)
        })
        .collect();
    sort(&mut revs);
    Ok(revs)
}

/// Sorts revisions by number, then name (upstream's `history.SortControllerRevisions`).
pub fn sort(revs: &mut [ControllerRevision]) {
    revs.sort_by(|a, b| {
        (a.revision, a.metadata.name.as_deref()).cmp(&(b.revision, b.metadata.name.as_deref()))
    });
}

/// What the owner of revisions is, for the revisions it creates.
#[derive(Debug, Clone)]
pub struct Owner {
    /// `apps/v1`.
    pub api_version: String,
    /// `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// Labels of its revisions (its template's labels, as upstream).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Why a revision could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// A revision of that name holds other data (the caller bumps its
    /// collision count and tries again).
    #[error("hash collision on controller revision {0}")]
    Collision(String),
}

/// The revision holding `data` (named `<owner>-<hash>`): an existing one
/// with equal data (renumbered as the newest when it is not), or a new one
/// numbered after the newest. `history` is the owner's revisions, oldest
/// first, and is kept up to date.
pub async fn ensure(
    api: &Api<ControllerRevision>,
    owner: &Owner,
    history: &mut Vec<ControllerRevision>,
    data: &Value,
    hash: &str,
) -> Result<ControllerRevision, Error> {
    let next = history.last().map(|r| r.revision).unwrap_or(0) + 1;
    let equal = history
        .iter()
        .rposition(|r| r.data.as_ref().map(|d| &d.0) == Some(data));
    if let Some(i) = equal {
        if i + 1 == history.len() {
            return Ok(history[i].clone());
        }
        let name = history[i].metadata.name.clone().unwrap_or_default();
        let updated = crate::update::merge_into(api, &name, &json!({"revision": next})).await?;
        history.remove(i);
        history.push(updated.clone());
        return Ok(updated);
    }
    let name = format!("{}-{hash}", owner.name);
    let mut labels = owner.labels.clone();
    labels.insert(HASH_LABEL.into(), hash.to_string());
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: owner.api_version.clone(),
                kind: owner.kind.clone(),
                name: owner.name.clone(),
                uid: owner.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data.clone())),
        revision: next,
    };
    match api.create(&PostParams::default(), &rev).await {
        Ok(created) => {
            history.push(created.clone());
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Someone (an earlier pass whose list we did not see) made it:
            // the same data is ours, other data is a collision.
            let existing = api.get(&name).await?;
            let ours = existing
                .metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == owner.uid);
            if ours && existing.data.as_ref().map(|d| &d.0) == Some(data) {
                let updated = if existing.revision < next - 1 || existing.revision == 0 {
                    crate::update::merge_into(api, &name, &json!({"revision": next})).await?
                } else {
                    existing
                };
                history.retain(|r| r.metadata.name.as_deref() != Some(&name));
                history.push(updated.clone());
                Ok(updated)
            } else {
                Err(Error::Collision(name))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the oldest revisions not in `live` beyond `limit` of them
/// (`revisionHistoryLimit`).
pub async fn truncate(
    api: &Api<ControllerRevision>,
    history: &[ControllerRevision],
    live: &BTreeSet<String>,
    limit: i32,
) -> Result<(), kube::Error> {
    let dead: Vec<&ControllerRevision> = history
        .iter()
        .filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or_default()))
        .collect();
    let excess = dead.len().saturating_sub(limit.max(0) as usize);
    for r in dead.into_iter().take(excess) {
        let name = r.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_the_template() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]},
        }))
        .unwrap();
        let data = patch_data(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let rev = ControllerRevision {
            data: Some(RawExtension(data.clone())),
            ..ControllerRevision::default()
        };
        assert_eq!(template_of(&rev), Some(t));
    }

    #[test]
    fn hash_is_stable_safe_and_moves_with_collisions() {
        let d = json!({"spec": {"template": {"a": 1}}});
        let h = hash(&d, None);
        assert_eq!(h, hash(&d, None));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(h, hash(&d, Some(1)));
        assert_ne!(h, hash(&json!({"spec": {"template": {"a": 2}}}), None));
    }
}
