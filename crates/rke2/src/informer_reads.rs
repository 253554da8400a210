//! One API client per controller that reads as kube-controller-manager
//! and writes as the controller's service account.
//!
//! Upstream's controllers read through shared informers that
//! kube-controller-manager runs under its own identity (its bootstrap role
//! may list and watch `*`) and act through clients of their service
//! accounts (`--use-service-account-credentials`), whose roles grant what
//! each controller writes and gets. Our controllers each hold one client,
//! so this client sends the informers' requests — a list or a watch, i.e.
//! a GET of a collection — with kube-controller-manager's certificate and
//! everything else (a GET of one object, every write) with the service
//! account's: the bootstrap policy as upstream's, no extra grants.

use http::{Method, Request};
use kube::client::Body;

/// True for what an informer sends: a list or a watch (a GET of a
/// collection, or any GET with `watch` set).
pub fn is_informer_read(method: &Method, path: &str, query: Option<&str>) -> bool {
    if method != Method::GET {
        return false;
    }
    if query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
    }) {
        return true;
    }
    let rest = if let Some(r) = path.strip_prefix("/api/") {
        // /api/v1/...
        r.split_once('/').map(|(_, r)| r).unwrap_or("")
    } else if let Some(r) = path.strip_prefix("/apis/") {
        // /apis/<group>/<version>/...
        let mut it = r.splitn(3, '/');
        let _ = (it.next(), it.next());
        it.next().unwrap_or("")
    } else {
        return false;
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        // namespaces/<ns>/<resource> lists; namespaces/<ns> gets one.
        ["namespaces", _, _] => true,
        ["namespaces", _, ..] => false,
        [_] => true,
        _ => false,
    }
}

/// For a GET of one object (not a subresource), its collection's path and
/// its name: what an informer's cache answers.
pub fn single_get<'a>(
    method: &Method,
    path: &'a str,
    query: Option<&str>,
) -> Option<(&'a str, &'a str)> {
    if method != Method::GET || query.is_some_and(|q| !q.is_empty()) {
        return None;
    }
    let (collection, name) = path.rsplit_once('/')?;
    if name.is_empty() || !is_informer_read(method, collection, None) {
        return None;
    }
    // `/api/v1/namespaces/<ns>` is a collection's item too, but
    // `/api/v1/namespaces/<ns>/pods` is itself a list.
    if is_informer_read(method, path, None) {
        return None;
    }
    Some((collection, name))
}

/// A client that sends informer reads through `reader` and every other
/// request through `writer`. A GET of one object is answered as a
/// controller's lister would: from a list of its collection filtered to
/// its name, read by `reader` (upstream's controllers read objects from
/// their informers' caches, so their roles need no `get` for them).
pub fn reads_as(reader: kube::Client, writer: kube::Client) -> kube::Client {
    let svc = tower::service_fn(move |req: Request<Body>| {
        let reader = reader.clone();
        let writer = writer.clone();
        async move {
            let (method, path, query) = (
                req.method().clone(),
                req.uri().path().to_string(),
                req.uri().query().map(str::to_string),
            );
            if let Some((collection, name)) = single_get(&method, &path, query.as_deref()) {
                return get_through_list(&reader, req, collection, name).await;
            }
            if is_informer_read(&method, &path, query.as_deref()) {
                reader.send(req).await
            } else {
                writer.send(req).await
            }
        }
    });
    kube::Client::new(svc, "default")
}

/// Answers a GET of `collection/name` with a filtered list.
async fn get_through_list(
    reader: &kube::Client,
    req: Request<Body>,
    collection: &str,
    name: &str,
) -> Result<http::Response<Body>, kube::Error> {
    let selector: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("fieldSelector", &format!("metadata.name={name}"))
        .finish();
    let mut list_req = Request::builder()
        .method(Method::GET)
        .uri(format!("{collection}?{selector}"));
    for (k, v) in req.headers() {
        list_req = list_req.header(k, v);
    }
    let list_req = list_req
        .body(Body::empty())
        .map_err(kube::Error::HttpError)?;
    let resp = reader.send(list_req).await?;
    if resp.status() != http::StatusCode::OK {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| kube::Error::Service(Box::new(e)))?
        .to_bytes();
    let list: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?;
    let json = |status: http::StatusCode, v: &serde_json::Value| {
        let mut r = http::Response::new(Body::from(serde_json::to_vec(v).expect("JSON")));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    let _ = parts;
    match list["items"].as_array().and_then(|i| i.first()) {
        Some(item) => {
            let mut item = item.clone();
            if item.get("kind").is_none_or(|k| k.is_null()) {
                let kind = list["kind"].as_str().unwrap_or("").trim_end_matches("List");
                item["kind"] = kind.into();
                item["apiVersion"] = list["apiVersion"].clone();
            }
            Ok(json(http::StatusCode::OK, &item))
        }
        None => {
            let resource = collection.rsplit('/').next().unwrap_or("");
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": format!("{resource} \"{name}\" not found"),
                "reason": "NotFound",
                "details": {"name": name, "kind": resource},
                "code": 404,
            });
            Ok(json(http::StatusCode::NOT_FOUND, &status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_watches_are_informer_reads() {
        let get = Method::GET;
        for (path, query, want) in [
            ("/api/v1/pods", None, true),
            ("/api/v1/namespaces/a/pods", Some("labelSelector=x"), true),
            ("/api/v1/namespaces/a/pods/p", None, false),
            ("/api/v1/namespaces/a/pods/p/status", None, false),
            ("/api/v1/namespaces", None, true),
            ("/api/v1/namespaces/a", None, false),
            ("/api/v1/nodes/n", None, false),
            (
                "/apis/apps/v1/deployments",
                Some("watch=true&resourceVersion=5"),
                true,
            ),
            ("/apis/apps/v1/namespaces/a/deployments", None, true),
            ("/apis/apps/v1/namespaces/a/deployments/d", None, false),
            (
                "/apis/apps/v1/namespaces/a/deployments",
                Some("fieldSelector=metadata.name%3Dd&watch=1"),
                true,
            ),
            ("/version", None, false),
        ] {
            assert_eq!(
                is_informer_read(&get, path, query),
                want,
                "{path} {query:?}"
            );
        }
        assert!(!is_informer_read(&Method::POST, "/api/v1/pods", None));
        assert_eq!(
            single_get(&get, "/api/v1/namespaces/a/configmaps/c", None),
            Some(("/api/v1/namespaces/a/configmaps", "c"))
        );
        assert_eq!(
            single_get(&get, "/api/v1/namespaces/a", None),
            Some(("/api/v1/namespaces", "a"))
        );
        assert_eq!(
            single_get(
                &get,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:x",
                None
            ),
            Some((
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                "system:x"
            ))
        );
        for (path, query) in [
            ("/api/v1/namespaces/a/pods", None),
            ("/api/v1/namespaces/a/pods/p/status", None),
            ("/apis/apps/v1/namespaces/a/deployments/d/scale", None),
            ("/api/v1/namespaces/a/pods/p", Some("resourceVersion=0")),
            ("/version", None),
        ] {
            assert_eq!(single_get(&get, path, query), None, "{path}");
        }
        assert_eq!(
            single_get(&Method::PUT, "/api/v1/namespaces/a/pods/p", None),
            None
        );
        assert!(!is_informer_read(
            &Method::DELETE,
            "/api/v1/namespaces/a/pods",
            None
        ));
    }
}
