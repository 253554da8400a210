//! `admission.k8s.io/v1` AdmissionReview: the request the apiserver sends
//! a webhook and the checks on the answer (upstream's
//! `VerifyAdmissionResponse`): the same apiVersion and kind, a response
//! whose `uid` is the request's, `allowed`, a base64 JSONPatch with
//! `patchType: JSONPatch` (mutating webhooks only), warnings.

use base64::Engine;
use serde_json::{Value, json};

/// What a webhook answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// `response.status` (code, reason, message) when given.
    pub status: Option<Value>,
    /// The decoded JSONPatch, when the webhook sent one.
    pub patch: Option<json_patch::Patch>,
    /// `response.warnings`.
    pub warnings: Vec<String>,
}

/// The `request` of an AdmissionReview.
#[derive(Debug, Clone)]
pub struct ReviewRequest<'a> {
    /// The request's uid (the response must carry it back).
    pub uid: String,
    /// (group, version, kind) of the object.
    pub kind: (&'a str, &'a str, &'a str),
    /// (group, version, resource) of the object.
    pub resource: (&'a str, &'a str, &'a str),
    /// The subresource, "" for the object itself.
    pub sub_resource: &'a str,
    /// The object's name ("" for a create with `generateName`).
    pub name: &'a str,
    /// The namespace ("" for cluster-scoped objects).
    pub namespace: &'a str,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: &'a str,
    /// The requester's user name.
    pub username: &'a str,
    /// The requester's groups.
    pub groups: &'a [String],
    /// The new object (none on DELETE).
    pub object: Option<&'a Value>,
    /// The stored object (UPDATE and DELETE).
    pub old_object: Option<&'a Value>,
    /// Whether the request is a dry run.
    pub dry_run: bool,
    /// The operation's options (CreateOptions, UpdateOptions, ...).
    pub options: Value,
}

impl ReviewRequest<'_> {
    /// The AdmissionReview body sent to the webhook.
    pub fn to_json(&self) -> Value {
        let gvk = |(g, v, k): (&str, &str, &str)| json!({"group": g, "version": v, "kind": k});
        let gvr = |(g, v, r): (&str, &str, &str)| json!({"group": g, "version": v, "resource": r});
        let mut req = json!({
            "uid": self.uid,
            "kind": gvk(self.kind),
            "resource": gvr(self.resource),
            "requestKind": gvk(self.kind),
            "requestResource": gvr(self.resource),
            "name": self.name,
            "operation": self.operation,
            "userInfo": {"username": self.username, "groups": self.groups},
            "object": self.object.cloned().unwrap_or(Value::Null),
            "oldObject": self.old_object.cloned().unwrap_or(Value::Null),
            "dryRun": self.dry_run,
            "options": self.options,
        });
        if !self.sub_resource.is_empty() {
            req["subResource"] = json!(self.sub_resource);
            req["requestSubResource"] = json!(self.sub_resource);
        }
        if !self.namespace.is_empty() {
            req["namespace"] = json!(self.namespace);
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
    }
}

/// Checks and decodes a webhook's answer to the request with `uid`;
/// `mutating` says whether a patch may come back. The error is the
/// reason as upstream words it after `received invalid webhook response: `.
pub fn decode_response(body: &[u8], uid: &str, mutating: bool) -> Result<Verdict, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let (api_version, kind) = (
        review["apiVersion"].as_str().unwrap_or(""),
        review["kind"].as_str().unwrap_or(""),
    );
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {api_version}, Kind={kind}"
        ));
    }
    let resp = review
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("webhook response was absent")?;
    let got_uid = resp["uid"].as_str().unwrap_or("");
    if got_uid != uid {
        return Err(format!("expected response.uid={uid:?}, got {got_uid:?}"));
    }
    let allowed = match &resp["allowed"] {
        Value::Bool(b) => *b,
        Value::Null => false,
        other => return Err(format!("response.allowed: expected a boolean, got {other}")),
    };
    let patch = match (resp["patch"].as_str(), resp["patchType"].as_str()) {
        (None | Some(""), None) => None,
        (None | Some(""), Some(_)) => {
            return Err("webhook returned response.patchType but not response.patch".into());
        }
        (Some(_), None) => {
            return Err("webhook returned response.patch but not response.patchType".into());
        }
        (Some(_), Some(_)) if !mutating => {
            return Err("validating webhook may not return response.patch".into());
        }
        (Some(p), Some("JSONPatch")) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| format!("response.patch: illegal base64 data: {e}"))?;
            Some(
                serde_json::from_slice::<json_patch::Patch>(&bytes)
                    .map_err(|e| format!("response.patch: not a JSON patch: {e}"))?,
            )
        }
        (Some(_), Some(t)) => {
            return Err(format!(
                "webhook returned invalid response.patchType of {t:?}"
            ));
        }
    };
    let warnings = resp["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let status = resp.get("status").filter(|s| s.is_object()).cloned();
    Ok(Verdict {
        allowed,
        status,
        patch,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ReviewRequest<'static> {
        static GROUPS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        ReviewRequest {
            uid: "u-1".into(),
            kind: ("", "v1", "ConfigMap"),
            resource: ("", "v1", "configmaps"),
            sub_resource: "",
            name: "cm",
            namespace: "default",
            operation: "CREATE",
            username: "admin",
            groups: GROUPS.get_or_init(|| vec!["system:masters".into()]),
            object: None,
            old_object: None,
            dry_run: true,
            options: json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
        }
    }

    #[test]
    fn the_request_carries_what_a_webhook_reads() {
        let obj = json!({"metadata": {"name": "cm"}});
        let mut r = request();
        r.object = Some(&obj);
        let v = r.to_json();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        let q = &v["request"];
        assert_eq!(q["uid"], "u-1");
        assert_eq!(
            q["kind"],
            json!({"group": "", "version": "v1", "kind": "ConfigMap"})
        );
        assert_eq!(q["resource"]["resource"], "configmaps");
        assert_eq!(q["requestResource"], q["resource"]);
        assert_eq!(q["namespace"], "default");
        assert_eq!(q["operation"], "CREATE");
        assert_eq!(q["userInfo"]["groups"][0], "system:masters");
        assert_eq!(q["object"], obj);
        assert_eq!(q["oldObject"], Value::Null);
        assert_eq!(q["dryRun"], true);
        assert!(q.get("subResource").is_none());
        r.sub_resource = "status";
        r.namespace = "";
        let q = r.to_json()["request"].clone();
        assert_eq!(q["subResource"], "status");
        assert!(q.get("namespace").is_none());
    }

    fn answer(resp: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})).unwrap()
    }

    #[test]
    fn answers_are_checked_as_upstream() {
        let ok = decode_response(
            &answer(json!({"uid": "u-1", "allowed": true, "warnings": ["w1"]})),
            "u-1",
            false,
        )
        .unwrap();
        assert!(ok.allowed);
        assert_eq!(ok.warnings, vec!["w1"]);
        assert!(ok.patch.is_none());

        let patch = base64::engine::general_purpose::STANDARD
            .encode(br#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#);
        let m = decode_response(
            &answer(
                json!({"uid": "u-1", "allowed": true, "patchType": "JSONPatch", "patch": patch}),
            ),
            "u-1",
            true,
        )
        .unwrap();
        assert_eq!(m.patch.unwrap().0.len(), 1);

        let deny = decode_response(
            &answer(
                json!({"uid": "u-1", "allowed": false, "status": {"code": 403, "message": "no"}}),
            ),
            "u-1",
            false,
        )
        .unwrap();
        assert!(!deny.allowed);
        assert_eq!(deny.status.unwrap()["message"], "no");

        for (body, uid, mutating, want) in [
            (
                b"not json".to_vec(),
                "u-1",
                false,
                "expected ident at line 1 column 2",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#.to_vec(),
                "u-1",
                false,
                "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got admission.k8s.io/v1beta1, Kind=AdmissionReview",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
                "u-1",
                false,
                "webhook response was absent",
            ),
            (
                answer(json!({"uid": "other", "allowed": true})),
                "u-1",
                false,
                "expected response.uid=\"u-1\", got \"other\"",
            ),
            (
                answer(json!({"uid": "u-1", "allowed": "yes"})),
                "u-1",
                false,
                "response.allowed: expected a boolean, got \"yes\"",
            ),
            (
                answer(json!({"uid": "u-1", "allowed": true, "patch": patch})),
                "u-1",
                true,
                "webhook returned response.patch but not response.patchType",
            ),
            (
                answer(
                    json!({"uid": "u-1", "allowed": true, "patch": patch, "patchType": "JSONPatch"}),
                ),
                "u-1",
                false,
                "validating webhook may not return response.patch",
            ),
            (
                answer(
                    json!({"uid": "u-1", "allowed": true, "patch": patch, "patchType": "Merge"}),
                ),
                "u-1",
                true,
                "webhook returned invalid response.patchType of \"Merge\"",
            ),
            (
                answer(
                    json!({"uid": "u-1", "allowed": true, "patch": "%%%", "patchType": "JSONPatch"}),
                ),
                "u-1",
                true,
                "response.patch: illegal base64 data",
            ),
            (
                answer(
                    json!({"uid": "u-1", "allowed": true, "patch": "e30=", "patchType": "JSONPatch"}),
                ),
                "u-1",
                true,
                "response.patch: not a JSON patch",
            ),
        ] {
            let err = decode_response(&body, uid, mutating).unwrap_err();
            assert!(err.starts_with(want), "{err} / {want}");
        }
    }
}
