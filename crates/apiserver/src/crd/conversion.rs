//! Conversion of custom objects between the versions of their CRD.
//!
//! Objects are stored in the CRD's storage version and served in the
//! version of the request. With `strategy: None` only `apiVersion`
//! changes ([`crate::objects::decorate`] rewrites it on every read); with
//! `strategy: Webhook` the objects go to the CRD's conversion webhook in
//! a `ConversionReview` (the first of `conversionReviewVersions` this
//! server speaks: v1, then v1beta1), dialled as admission webhooks are
//! ([`crate::admission::client`]: a URL, or a Ready endpoint of a
//! Service, TLS verified with `caBundle`). A list converts in one call.
//!
//! As upstream, the webhook may change labels and annotations only: the
//! rest of `metadata` is taken from the object sent, and an answer that
//! does not match the request (uid, count, apiVersion, kind) fails the
//! request with a 500 naming the webhook.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::ApiState;
use crate::admission::client::{self, Endpoint};
use crate::status::{ApiError, ApiResult};

/// How long one conversion call may take (upstream sends `timeout=30s`).
const TIMEOUT: Duration = Duration::from_secs(30);

/// A CRD's conversion webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Where it is called.
    pub endpoint: Endpoint,
    /// The decoded `caBundle` (PEM), empty for the system roots.
    pub ca_bundle: Vec<u8>,
    /// The `ConversionReview` version sent (`v1` or `v1beta1`), or `None`
    /// when the CRD lists none this server speaks (every call fails then).
    pub review_version: Option<String>,
}

impl Webhook {
    /// The webhook of a CRD's `spec.conversion`, when its strategy is
    /// `Webhook`.
    pub fn of(conversion: &Value) -> Option<Webhook> {
        if conversion["strategy"] != "Webhook" {
            return None;
        }
        let hook = &conversion["webhook"];
        let (endpoint, ca_bundle) = Endpoint::of_client_config(&hook["clientConfig"]);
        let review_version = hook["conversionReviewVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|v| matches!(*v, "v1" | "v1beta1"))
            .map(str::to_string);
        Some(Webhook {
            endpoint,
            ca_bundle,
            review_version,
        })
    }
}

/// `group/version, Kind=Kind` as Go prints a GroupVersionKind.
fn gvk(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    format!("{api_version}, Kind={kind}")
}

/// Converts `objects` of type `rt` to `desired`: through the type's
/// built-in conversion when it has one, else as [`convert`] does.
pub async fn convert_for(
    state: &ApiState,
    rt: &crate::registry::ResourceType,
    objects: &mut [Value],
    desired: &str,
) -> ApiResult<()> {
    if let Some(conv) = rt.strategy.convert_version() {
        for o in objects.iter_mut() {
            conv(o, desired);
        }
        return Ok(());
    }
    convert(state, rt.strategy.conversion_webhook(), objects, desired).await
}

/// The error of a failed conversion: upstream returns a plain error,
/// which becomes a 500 Status with no reason.
fn failed(message: String) -> ApiError {
    ApiError::new(500, "", message)
}

/// Converts `objects` to `desired` (`group/version`) in place: through
/// `webhook` when there is one and an object is in another version,
/// else by rewriting `apiVersion` (the `None` strategy).
pub async fn convert(
    state: &ApiState,
    webhook: Option<&Webhook>,
    objects: &mut [Value],
    desired: &str,
) -> ApiResult<()> {
    let pending: Vec<usize> = (0..objects.len())
        .filter(|&i| objects[i]["apiVersion"].as_str() != Some(desired))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let Some(webhook) = webhook else {
        for i in pending {
            objects[i]["apiVersion"] = json!(desired);
        }
        return Ok(());
    };
    let from = gvk(&objects[pending[0]]);
    let sent: Vec<Value> = pending.iter().map(|&i| objects[i].clone()).collect();
    let converted = call(state, webhook, &sent, desired)
        .await
        .map_err(|e| failed(format!("conversion webhook for {from} failed: {e}")))?;
    if converted.len() != sent.len() {
        return Err(failed(format!(
            "conversion webhook for {from} returned {} objects, expected {}",
            converted.len(),
            sent.len()
        )));
    }
    for (n, (i, mut out)) in pending.into_iter().zip(converted).enumerate() {
        check_converted(&objects[i], &out, desired).map_err(|e| {
            failed(format!(
                "conversion webhook for {from} returned invalid object at index {n}: {e}"
            ))
        })?;
        restore_metadata(&objects[i], &mut out);
        objects[i] = out;
    }
    Ok(())
}

/// What must hold of one converted object (upstream's checks).
fn check_converted(sent: &Value, got: &Value, desired: &str) -> Result<(), String> {
    if !got.is_object() {
        return Err("the converted object is not a JSON object".into());
    }
    let got_version = got["apiVersion"].as_str().unwrap_or("");
    if got_version != desired {
        return Err(format!(
            "invalid apiVersion {got_version:?}, expected {desired:?}"
        ));
    }
    if got["kind"] != sent["kind"] {
        return Err(format!(
            "invalid kind {:?}, expected {:?}",
            got["kind"].as_str().unwrap_or(""),
            sent["kind"].as_str().unwrap_or("")
        ));
    }
    if !got["metadata"].is_object() {
        return Err("metadata: Required value: metadata must be an object".into());
    }
    for key in ["labels", "annotations"] {
        match &got["metadata"][key] {
            Value::Null => {}
            Value::Object(m) if m.values().all(Value::is_string) => {}
            _ => {
                return Err(format!(
                    "invalid metadata: metadata.{key}: Invalid value: must be a map of strings"
                ));
            }
        }
    }
    Ok(())
}

/// Upstream keeps the sent metadata and takes only labels and
/// annotations from the webhook's answer.
fn restore_metadata(sent: &Value, got: &mut Value) {
    let mut meta = sent["metadata"].clone();
    for key in ["labels", "annotations"] {
        match got["metadata"].get(key) {
            Some(v) if !v.is_null() => meta[key] = v.clone(),
            _ => {
                if let Some(m) = meta.as_object_mut() {
                    m.remove(key);
                }
            }
        }
    }
    got["metadata"] = meta;
}

/// One `ConversionReview` exchange: the converted objects, or why not.
async fn call(
    state: &ApiState,
    webhook: &Webhook,
    objects: &[Value],
    desired: &str,
) -> Result<Vec<Value>, String> {
    let Some(review_version) = &webhook.review_version else {
        return Err("no supported conversion review versions".into());
    };
    let uid = uuid::Uuid::new_v4().to_string();
    let review = json!({
        "apiVersion": format!("apiextensions.k8s.io/{review_version}"),
        "kind": "ConversionReview",
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": objects},
    });
    let body = Bytes::from(serde_json::to_vec(&review).map_err(|e| e.to_string())?);
    let url = webhook.endpoint.url_for(TIMEOUT);
    let exchange = async {
        let target = webhook.endpoint.resolve(state, TIMEOUT).await?;
        client::post(state, &target, &webhook.ca_bundle, body).await
    };
    let (status, answer) = match tokio::time::timeout(TIMEOUT, exchange).await {
        Err(_) => return Err(format!("Post {url:?}: context deadline exceeded")),
        Ok(Err(e)) => return Err(format!("Post {url:?}: {e}")),
        Ok(Ok(x)) => x,
    };
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&answer[..answer.len().min(256)]).into_owned();
        return Err(format!(
            "an error on the server ({text:?}) has prevented the request from succeeding"
        ));
    }
    decode_response(&answer, &uid, review_version)
}

/// The converted objects of a `ConversionReview` answer.
fn decode_response(answer: &[u8], uid: &str, review_version: &str) -> Result<Vec<Value>, String> {
    let review: Value = serde_json::from_slice(answer)
        .map_err(|e| format!("the answer is not a ConversionReview: {e}"))?;
    let want = format!("apiextensions.k8s.io/{review_version}");
    if review_version == "v1"
        && (review["apiVersion"].as_str() != Some(want.as_str())
            || review["kind"] != "ConversionReview")
    {
        return Err(format!(
            "expected webhook response of {want}, Kind=ConversionReview, got {}",
            gvk(&review)
        ));
    }
    let response = &review["response"];
    if !response.is_object() {
        return Err("no response provided".into());
    }
    // v1beta1 answers were never checked for their uid upstream.
    if review_version == "v1" && response["uid"].as_str() != Some(uid) {
        return Err(format!(
            "expected response.uid={uid:?}, got {:?}",
            response["uid"].as_str().unwrap_or("")
        ));
    }
    let result = &response["result"];
    if result["status"] != "Success" {
        return Err(match result["message"].as_str() {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => format!(
                "response.result.status was '{}', not 'Success'",
                result["status"].as_str().unwrap_or("")
            ),
        });
    }
    Ok(response["convertedObjects"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd_conversion(versions: &[&str]) -> Value {
        json!({"strategy": "Webhook", "webhook": {
            "conversionReviewVersions": versions,
            "clientConfig": {"service": {"namespace": "ns", "name": "conv", "path": "/convert"}}
        }})
    }

    #[test]
    fn the_first_review_version_spoken_is_used() {
        let w = Webhook::of(&crd_conversion(&["v2", "v1beta1", "v1"])).expect("webhook");
        assert_eq!(w.review_version.as_deref(), Some("v1beta1"));
        assert_eq!(
            w.endpoint,
            Endpoint::Service {
                namespace: "ns".into(),
                name: "conv".into(),
                path: "/convert".into(),
                port: 443
            }
        );
        assert!(
            Webhook::of(&crd_conversion(&["v9"]))
                .expect("webhook")
                .review_version
                .is_none()
        );
        assert!(Webhook::of(&json!({"strategy": "None"})).is_none());
    }

    #[test]
    fn answers_are_checked_as_upstream() {
        let ok = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
            "response": {"uid": "u1", "result": {"status": "Success"}, "convertedObjects": [{"a": 1}]}});
        let bytes = serde_json::to_vec(&ok).unwrap();
        assert_eq!(
            decode_response(&bytes, "u1", "v1").unwrap(),
            vec![json!({"a": 1})]
        );
        assert_eq!(
            decode_response(&bytes, "u2", "v1").unwrap_err(),
            r#"expected response.uid="u2", got "u1""#
        );
        // v1beta1 answers are not checked for their uid.
        assert!(decode_response(&bytes, "u2", "v1beta1").is_ok());
        let failed = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
            "response": {"uid": "u1", "result": {"status": "Failure", "message": "no way"}}});
        assert_eq!(
            decode_response(&serde_json::to_vec(&failed).unwrap(), "u1", "v1").unwrap_err(),
            "no way"
        );
        assert!(
            decode_response(b"<html>", "u1", "v1")
                .unwrap_err()
                .starts_with("the answer is not a ConversionReview")
        );
        let admission =
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {}});
        assert_eq!(
            decode_response(&serde_json::to_vec(&admission).unwrap(), "u1", "v1").unwrap_err(),
            "expected webhook response of apiextensions.k8s.io/v1, Kind=ConversionReview, got admission.k8s.io/v1, Kind=AdmissionReview"
        );
    }

    #[test]
    fn only_labels_and_annotations_come_from_the_webhook() {
        let sent = json!({"apiVersion": "g/v1", "kind": "K", "metadata": {
            "name": "a", "uid": "1", "labels": {"x": "1"}, "annotations": {"gone": "y"}}});
        let mut got = json!({"apiVersion": "g/v2", "kind": "K", "metadata": {
            "name": "renamed", "labels": {"x": "2"}}, "spec": {}});
        check_converted(&sent, &got, "g/v2").unwrap();
        restore_metadata(&sent, &mut got);
        assert_eq!(
            got["metadata"],
            json!({"name": "a", "uid": "1", "labels": {"x": "2"}})
        );
        assert_eq!(
            check_converted(&sent, &got, "g/v3").unwrap_err(),
            r#"invalid apiVersion "g/v2", expected "g/v3""#
        );
        let bad = json!({"apiVersion": "g/v2", "kind": "K", "metadata": {"labels": {"x": 1}}});
        assert!(
            check_converted(&sent, &bad, "g/v2")
                .unwrap_err()
                .contains("metadata.labels")
        );
        let other_kind = json!({"apiVersion": "g/v2", "kind": "Other", "metadata": {}});
        assert!(
            check_converted(&sent, &other_kind, "g/v2")
                .unwrap_err()
                .starts_with("invalid kind")
        );
    }
}
