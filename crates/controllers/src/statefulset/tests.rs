use super::*;

fn set(extra: serde_json::Value) -> StatefulSet {
    let mut v = json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "set-uid", "generation": 3},
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "w"}},
            "template": {"metadata": {"labels": {"app": "w"}},
                         "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
        },
    });
    json_patch::merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

fn rev(name: &str, set: &StatefulSet) -> Revision {
    Revision {
        name: name.into(),
        template: set.spec.clone().unwrap().template,
    }
}

/// A pod of ordinal `ord` at revision `r`, Running, Ready or not.
fn pod(set: &StatefulSet, r: &str, ord: i32, ready: bool) -> Pod {
    let mut p = new_pod(set, &rev(r, set), ord);
    p.metadata.uid = Some(format!("uid-{ord}"));
    p.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "lastTransitionTime": "2020-01-01T00:00:00Z"}],
        }))
        .unwrap(),
    );
    p
}

fn created(p: &Plan) -> Vec<String> {
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::CreatePod(p) => p.metadata.name.clone(),
            _ => None,
        })
        .collect()
}

fn deleted(p: &Plan) -> Vec<String> {
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::DeletePod(n, _) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn ordinals_parse_strictly() {
    assert_eq!(ordinal_of("web", "web-0"), Some(0));
    assert_eq!(ordinal_of("web", "web-12"), Some(12));
    assert_eq!(ordinal_of("web", "web-01"), None);
    assert_eq!(ordinal_of("web", "web-x"), None);
    assert_eq!(ordinal_of("web", "webb-1"), None);
    assert_eq!(ordinal_of("web", "web-"), None);
}

#[test]
fn pods_get_identity_labels_and_claims() {
    let s = set(json!({"spec": {"volumeClaimTemplates": [
        {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}]}}));
    let p = new_pod(&s, &rev("web-abc", &s), 2);
    assert_eq!(p.metadata.name.as_deref(), Some("web-2"));
    let labels = p.metadata.labels.clone().unwrap();
    assert_eq!(labels[REVISION_LABEL], "web-abc");
    assert_eq!(labels[POD_NAME_LABEL], "web-2");
    assert_eq!(labels[POD_INDEX_LABEL], "2");
    assert_eq!(labels["app"], "w");
    let spec = p.spec.unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-2"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let vols = spec.volumes.unwrap();
    assert_eq!(vols[0].name, "data");
    assert_eq!(
        vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
        "data-web-2"
    );
    let owner = &p.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("StatefulSet", Some(true))
    );
    let claims = new_claims(&s, 2);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-2"));
    assert_eq!(claims[0].metadata.labels.as_ref().unwrap()["app"], "w");
}

#[test]
fn ordered_ready_creates_one_at_a_time() {
    let s = set(json!({}));
    let r = rev("web-1", &s);
    let now = Timestamp::now();
    let p = plan(&s, &[], &[], &r, &r, now);
    assert_eq!(created(&p), vec!["web-0"]);
    // web-0 not Ready yet: nothing more.
    let pods = vec![pod(&s, "web-1", 0, false)];
    let p = plan(&s, &pods, &[], &r, &r, now);
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(p.status.replicas, 1);
    assert_eq!(p.status.ready_replicas, Some(0));
    // Ready: the next one.
    let pods = vec![pod(&s, "web-1", 0, true)];
    let p = plan(&s, &pods, &[], &r, &r, now);
    assert_eq!(created(&p), vec!["web-1"]);
    // minReadySeconds not yet passed: wait, and come back when it has.
    let s2 = set(json!({"spec": {"minReadySeconds": 60}}));
    let mut young = pod(&s2, "web-1", 0, true);
    young.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    let p = plan(&s2, &[young], &[], &r, &r, now);
    assert!(created(&p).is_empty());
    assert_eq!(p.status.available_replicas, Some(0));
    assert!(p.recheck_after.is_some_and(|d| d.as_secs() <= 60));
}

#[test]
fn parallel_creates_and_deletes_at_once() {
    let s = set(json!({"spec": {"podManagementPolicy": "Parallel"}}));
    let r = rev("web-1", &s);
    let p = plan(&s, &[], &[], &r, &r, Timestamp::now());
    assert_eq!(created(&p), vec!["web-0", "web-1", "web-2"]);
    let s = set(json!({"spec": {"podManagementPolicy": "Parallel", "replicas": 1}}));
    let pods: Vec<Pod> = (0..3).map(|o| pod(&s, "web-1", o, false)).collect();
    let p = plan(&s, &pods, &[], &r, &r, Timestamp::now());
    assert_eq!(deleted(&p), vec!["web-2", "web-1"]);
}

#[test]
fn ordered_scale_down_takes_highest_first_while_healthy() {
    let s = set(json!({"spec": {"replicas": 1}}));
    let r = rev("web-1", &s);
    let pods: Vec<Pod> = (0..3).map(|o| pod(&s, "web-1", o, true)).collect();
    let p = plan(&s, &pods, &[], &r, &r, Timestamp::now());
    assert_eq!(deleted(&p), vec!["web-2"]);
    // An unhealthy pod elsewhere blocks the scale-down.
    let mut pods = pods;
    pods[0] = pod(&s, "web-1", 0, false);
    let p = plan(&s, &pods, &[], &r, &r, Timestamp::now());
    assert!(deleted(&p).is_empty());
}

#[test]
fn rolling_update_honours_partition_and_order() {
    let s = set(json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"partition": 1}}}}));
    let old = rev("web-old", &s);
    let new = rev("web-new", &s);
    let now = Timestamp::now();
    let pods: Vec<Pod> = (0..3).map(|o| pod(&s, "web-old", o, true)).collect();
    let p = plan(&s, &pods, &[], &old, &new, now);
    assert_eq!(deleted(&p), vec!["web-2"]);
    assert_eq!(p.status.updated_replicas, Some(0));
    assert_eq!(p.status.current_replicas, Some(3));
    // web-2 gone: made again at the update revision.
    let p = plan(&s, &pods[..2], &[], &old, &new, now);
    let Step::CreatePod(made) = &p.steps[0] else {
        panic!("{:?}", p.steps)
    };
    assert_eq!(
        made.metadata.labels.as_ref().unwrap()[REVISION_LABEL],
        "web-new"
    );
    // web-2 updated but not Ready: wait.
    let mut pods = pods;
    pods[2] = pod(&s, "web-new", 2, false);
    let p = plan(&s, &pods, &[], &old, &new, now);
    assert!(deleted(&p).is_empty());
    // Ready: web-1 next; web-0 is below the partition and stays.
    pods[2] = pod(&s, "web-new", 2, true);
    let p = plan(&s, &pods, &[], &old, &new, now);
    assert_eq!(deleted(&p), vec!["web-1"]);
    pods[1] = pod(&s, "web-new", 1, true);
    let p = plan(&s, &pods, &[], &old, &new, now);
    assert!(deleted(&p).is_empty());
    assert_eq!(p.status.updated_replicas, Some(2));
    assert_eq!(p.status.current_revision.as_deref(), Some("web-old"));
    // A deleted pod below the partition comes back at the current revision.
    let p = plan(&s, &pods[1..], &[], &old, &new, now);
    let Step::CreatePod(made) = &p.steps[0] else {
        panic!("{:?}", p.steps)
    };
    assert_eq!(made.metadata.name.as_deref(), Some("web-0"));
    assert_eq!(
        made.metadata.labels.as_ref().unwrap()[REVISION_LABEL],
        "web-old"
    );
}

#[test]
fn rolling_update_with_max_unavailable_and_completion() {
    let s = set(json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"partition": 0, "maxUnavailable": 2}}}}));
    let old = rev("web-old", &s);
    let new = rev("web-new", &s);
    let now = Timestamp::now();
    let pods: Vec<Pod> = (0..3).map(|o| pod(&s, "web-old", o, true)).collect();
    let p = plan(&s, &pods, &[], &old, &new, now);
    assert_eq!(deleted(&p), vec!["web-2", "web-1"]);
    let pods: Vec<Pod> = (0..3).map(|o| pod(&s, "web-new", o, true)).collect();
    let p = plan(&s, &pods, &[], &old, &new, now);
    assert!(p.steps.is_empty());
    assert_eq!(p.status.current_revision.as_deref(), Some("web-new"));
    assert_eq!(p.status.current_replicas, Some(3));
    assert_eq!(p.status.updated_replicas, Some(3));
    assert_eq!(p.status.observed_generation, Some(3));
}

#[test]
fn on_delete_leaves_outdated_pods() {
    let s = set(json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}));
    let old = rev("web-old", &s);
    let new = rev("web-new", &s);
    let pods: Vec<Pod> = (0..3).map(|o| pod(&s, "web-old", o, true)).collect();
    let p = plan(&s, &pods, &[], &old, &new, Timestamp::now());
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    // A pod the user deleted comes back new.
    let p = plan(&s, &pods[..2], &[], &old, &new, Timestamp::now());
    let Step::CreatePod(made) = &p.steps[0] else {
        panic!("{:?}", p.steps)
    };
    assert_eq!(
        made.metadata.labels.as_ref().unwrap()[REVISION_LABEL],
        "web-new"
    );
}

#[test]
fn failed_pods_are_replaced() {
    let s = set(json!({}));
    let r = rev("web-1", &s);
    let mut pods: Vec<Pod> = (0..3).map(|o| pod(&s, "web-1", o, true)).collect();
    pods[1].status.as_mut().unwrap().phase = Some("Failed".into());
    let p = plan(&s, &pods, &[], &r, &r, Timestamp::now());
    assert_eq!(deleted(&p), vec!["web-1"]);
    assert!(created(&p).is_empty());
}

#[test]
fn claims_follow_the_retention_policy() {
    let templates = json!([{"metadata": {"name": "data"},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}}}]);
    let s = set(
        json!({"spec": {"replicas": 1, "volumeClaimTemplates": templates,
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"}}}),
    );
    let r = rev("web-1", &s);
    let p = plan(&s, &[], &[], &r, &r, Timestamp::now());
    let Step::CreateClaim(c) = &p.steps[0] else {
        panic!("{:?}", p.steps)
    };
    assert_eq!(c.metadata.name.as_deref(), Some("data-web-0"));
    let refs = c.metadata.owner_references.clone().unwrap();
    assert_eq!(
        (refs[0].kind.as_str(), refs[0].uid.as_str()),
        ("StatefulSet", "set-uid")
    );
    assert!(matches!(&p.steps[1], Step::CreatePod(_)));
    // Scaled from 2 to 1: the claim of web-1 is owned by web-1 too.
    let pods: Vec<Pod> = (0..2).map(|o| pod(&s, "web-1", o, true)).collect();
    let claims: Vec<PersistentVolumeClaim> = (0..2)
        .map(|o| {
            let mut c = new_claims(&s, o).remove(0);
            c.metadata.owner_references = Some(vec![owner_ref(&s, false)]);
            c
        })
        .collect();
    let p = plan(&s, &pods, &claims, &r, &r, Timestamp::now());
    let set_owners: Vec<&Step> = p
        .steps
        .iter()
        .filter(|s| matches!(s, Step::SetClaimOwners(..)))
        .collect();
    assert_eq!(set_owners.len(), 1, "{:?}", p.steps);
    let Step::SetClaimOwners(name, refs) = set_owners[0] else {
        unreachable!()
    };
    assert_eq!(name, "data-web-1");
    // Scaled away: owned by its pod alone, or the set would keep it.
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(
        (refs[0].kind.as_str(), refs[0].uid.as_str()),
        ("Pod", "uid-1")
    );
    assert_eq!(deleted(&p), vec!["web-1"]);
    // Retain everywhere: the references go.
    let s = set(json!({"spec": {"replicas": 2, "volumeClaimTemplates": templates}}));
    let p = plan(&s, &pods, &claims, &r, &r, Timestamp::now());
    assert_eq!(
        p.steps
            .iter()
            .filter(|s| matches!(s, Step::SetClaimOwners(_, refs) if refs.is_empty()))
            .count(),
        2
    );
}

#[test]
fn membership_is_the_name_minus_a_final_ordinal() {
    assert!(is_member("web", "web-0"));
    assert!(is_member("web", "web-12"));
    assert!(is_member("my-web", "my-web-3"));
    assert!(!is_member("web", "web"));
    assert!(!is_member("web", "web-"));
    assert!(!is_member("web", "web-x"));
    assert!(!is_member("web", "web-x-1"));
    assert!(!is_member("my", "my-web-1"));
    assert!(!is_member("web", "webs-1"));
}

/// A pod named `name` labelled `labels`, controlled by `owner` (a uid).
fn loose_pod(name: &str, labels: serde_json::Value, owner: Option<&str>) -> Pod {
    let refs = owner.map(|uid| {
        json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
                "uid": uid, "controller": true, "blockOwnerDeletion": true}])
    });
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
                     "labels": labels, "ownerReferences": refs},
    }))
    .unwrap()
}

fn names(pods: &[Pod]) -> Vec<&str> {
    pods.iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect()
}

#[test]
fn orphans_that_match_are_adopted_and_strays_released() {
    let s = set(json!({}));
    let sel = label_selector_from_json(&json!({"matchLabels": {"app": "w"}})).unwrap();
    let mut elsewhere = loose_pod("web-5", json!({"app": "w"}), None);
    elsewhere.metadata.namespace = Some("other".into());
    let mut going = loose_pod("web-4", json!({"app": "w"}), None);
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    let pods = vec![
        loose_pod("web-0", json!({"app": "w"}), Some("set-uid")),
        // Orphans: matching, wrong labels, wrong name.
        loose_pod("web-1", json!({"app": "w"}), None),
        loose_pod("web-2", json!({"app": "x"}), None),
        loose_pod("other-2", json!({"app": "w"}), None),
        loose_pod("web-extra", json!({"app": "w"}), None),
        // Ours but no longer matching: by labels, by name.
        loose_pod("web-3", json!({"app": "x"}), Some("set-uid")),
        loose_pod("stray", json!({"app": "w"}), Some("set-uid")),
        // Someone else's.
        loose_pod("web-6", json!({"app": "w"}), Some("another-set")),
        elsewhere,
        going,
    ];
    let c = sort_pods(&s, &sel, pods);
    assert_eq!(names(&c.owned), ["web-0"]);
    assert_eq!(names(&c.adopt), ["web-1"]);
    assert_eq!(names(&c.release), ["web-3", "stray"]);
}

#[test]
fn claims_of_an_earlier_set_of_the_same_name_are_taken_over() {
    let templates = json!([{"metadata": {"name": "data"},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}}}]);
    let s = set(
        json!({"spec": {"replicas": 1, "volumeClaimTemplates": templates,
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}}),
    );
    let r = rev("web-1", &s);
    let pods = vec![pod(&s, "web-1", 0, true)];
    let mut old = s.clone();
    old.metadata.uid = Some("old-set-uid".into());
    let mut orphan = new_claims(&s, 0).remove(0);
    orphan.metadata.owner_references = None;
    let mut stale = orphan.clone();
    stale.metadata.owner_references = Some(vec![owner_ref(&old, false)]);
    for claim in [orphan, stale] {
        let p = plan(&s, &pods, &[claim], &r, &r, Timestamp::now());
        let owners: Vec<&Vec<OwnerReference>> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::SetClaimOwners(n, refs) if n == "data-web-0" => Some(refs),
                _ => None,
            })
            .collect();
        assert_eq!(owners.len(), 1, "{:?}", p.steps);
        let uids: Vec<&str> = owners[0].iter().map(|r| r.uid.as_str()).collect();
        assert_eq!(uids, ["set-uid"]);
    }
}
