//! What kube-apiserver's proxy transport (apimachinery's
//! `util/proxy/transport.go`, wrapped in by the upgrade-aware handler of
//! `pods/proxy`, `services/proxy` and `nodes/proxy`) does to a backend's
//! answer so that a browser following it stays under the proxy path: a
//! redirect's `Location` and the URL attributes of a `text/html` body
//! (`a href`, `img src`, `form action`, … as upstream's table) that point
//! at the backend (or the apiserver's own host) with an absolute path get
//! the proxy prefix; relative references and other hosts are left alone.
//! Bodies in `gzip` or `deflate` are decoded and encoded again; other
//! encodings pass unchanged, as upstream. The backend's CORS headers are
//! dropped (upstream's `corsRemovingTransport`).

use std::io::{Read, Write};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use tracing::debug;

/// The largest HTML body that is rewritten (it is held in memory, as
/// upstream holds it); a longer one is relayed unchanged.
pub const MAX_HTML_BODY: usize = 16 << 20;

/// Which attributes of which elements hold a URL (upstream's
/// `atomsToAttrs`).
const URL_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("a", &["href"]),
    ("applet", &["codebase"]),
    ("area", &["href"]),
    ("audio", &["src"]),
    ("base", &["href"]),
    ("blockquote", &["cite"]),
    ("body", &["background"]),
    ("button", &["formaction"]),
    ("command", &["icon"]),
    ("del", &["cite"]),
    ("embed", &["src"]),
    ("form", &["action"]),
    ("frame", &["longdesc", "src"]),
    ("head", &["profile"]),
    ("html", &["manifest"]),
    ("iframe", &["longdesc", "src"]),
    ("img", &["longdesc", "src", "usemap"]),
    ("input", &["src", "usemap", "formaction"]),
    ("ins", &["cite"]),
    ("link", &["href"]),
    ("object", &["classid", "codebase", "data", "usemap"]),
    ("q", &["cite"]),
    ("script", &["src"]),
    ("source", &["src"]),
    ("video", &["poster", "src"]),
];

/// Response headers of the backend that never reach the client.
const CORS_HEADERS: [&str; 4] = [
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
];

/// How the links of one proxied answer are rewritten.
#[derive(Debug, Clone)]
pub struct LinkRewriter {
    /// The proxy path the links go under
    /// (`/api/v1/namespaces/<ns>/pods/<id>/proxy`).
    pub prefix: String,
    /// The backend's `host:port` as the apiserver dialled it.
    pub backend: String,
    /// The `Host` the client sent to the apiserver.
    pub own_host: String,
}

/// A URL reference split as Go's `url.Parse` splits it, every part kept
/// raw so what is not rewritten stays byte for byte.
struct UrlRef<'a> {
    /// `scheme://userinfo@host` (empty when the reference has none).
    origin: &'a str,
    /// The host (with port) of the authority.
    host: &'a str,
    path: &'a str,
    /// `?query#fragment`.
    tail: &'a str,
}

fn split_url(s: &str) -> Option<UrlRef<'_>> {
    // A scheme is a letter then letters, digits, `+`, `-`, `.` up to `:`.
    let scheme_end = s.find([':', '/', '?', '#']);
    let after_scheme = match scheme_end {
        Some(i) if s.as_bytes()[i] == b':' => {
            let scheme = &s[..i];
            let mut chars = scheme.chars();
            match chars.next() {
                // Go refuses `:x` ("missing protocol scheme"): such a
                // value is left alone.
                None => return None,
                Some(c) if !c.is_ascii_alphabetic() => return None,
                _ => {}
            }
            if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) {
                return None;
            }
            i + 1
        }
        _ => 0,
    };
    let rest = &s[after_scheme..];
    let (host, path_start) = match rest.strip_prefix("//") {
        Some(auth) => {
            let end = auth.find(['/', '?', '#']).unwrap_or(auth.len());
            let authority = &auth[..end];
            let host = authority.rsplit('@').next().unwrap_or(authority);
            (host, after_scheme + 2 + end)
        }
        None => ("", after_scheme),
    };
    let rest = &s[path_start..];
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    Some(UrlRef {
        origin: &s[..path_start],
        host,
        path: &rest[..path_end],
        tail: &rest[path_end..],
    })
}

/// Go's `path.Clean` of an absolute path: `.` and `..` segments resolved,
/// repeated slashes folded, no trailing slash but for the root.
fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

impl LinkRewriter {
    /// One URL (a `Location` or an attribute value) as upstream's
    /// `rewriteURL`: a reference with an absolute path on the backend's
    /// host, the apiserver's host or no host gets the proxy prefix (unless
    /// it has it already) and loses scheme and host (kept when they are
    /// the apiserver's own); anything else is returned unchanged.
    pub fn rewrite_url(&self, s: &str) -> String {
        let Some(u) = split_url(s) else {
            return s.to_string();
        };
        let other_host = !u.host.is_empty() && u.host != self.backend && u.host != self.own_host;
        if other_host || !u.path.starts_with('/') {
            return s.to_string();
        }
        let origin = if !u.host.is_empty() && u.host == self.own_host {
            u.origin
        } else {
            ""
        };
        if u.path.starts_with(&self.prefix) {
            return format!("{origin}{}{}", u.path, u.tail);
        }
        let mut path = clean_path(&format!("{}/{}", self.prefix, u.path));
        if u.path.ends_with('/') && !path.ends_with('/') {
            path.push('/');
        }
        format!("{origin}{path}{}", u.tail)
    }

    /// An HTML document with the URL attributes of upstream's table
    /// rewritten by [`Self::rewrite_url`]; everything else unchanged.
    pub fn rewrite_html(&self, html: &[u8]) -> Result<Vec<u8>, lol_html::errors::RewritingError> {
        let mut out = Vec::with_capacity(html.len() + html.len() / 8);
        let settings = lol_html::Settings::new().append_element_content_handler(
            lol_html::element!("*", |el| {
                let tag = el.tag_name();
                let Some((_, attrs)) = URL_ATTRIBUTES.iter().find(|(t, _)| *t == tag) else {
                    return Ok(());
                };
                for attr in *attrs {
                    if let Some(v) = el.get_attribute(attr) {
                        let nv = self.rewrite_url(&v);
                        if nv != v {
                            el.set_attribute(attr, &nv)?;
                        }
                    }
                }
                Ok(())
            }),
        );
        let mut rewriter =
            lol_html::HtmlRewriter::new(settings, |c: &[u8]| out.extend_from_slice(c));
        rewriter.write(html)?;
        rewriter.end()?;
        Ok(out)
    }

    /// The backend's answer as the client gets it: CORS headers dropped,
    /// a redirect's `Location` rewritten (its body then left alone, as
    /// upstream), a `text/html` body's links rewritten.
    pub async fn rewrite_response(&self, mut resp: Response) -> Response {
        for h in CORS_HEADERS {
            resp.headers_mut().remove(h);
        }
        if let Some(loc) = resp.headers().get(header::LOCATION) {
            if let Ok(nv) = loc
                .to_str()
                .map(|l| self.rewrite_url(l))
                .map(HeaderValue::try_from)
                && let Ok(nv) = nv
            {
                resp.headers_mut().insert(header::LOCATION, nv);
            }
            return resp;
        }
        let is_html = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| ct.split(';').next().unwrap_or("").trim())
            .is_some_and(|ct| ct.eq_ignore_ascii_case("text/html"));
        if !is_html {
            return resp;
        }
        let encoding = match resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        {
            None => Encoding::Identity,
            Some(e) if e.is_empty() => Encoding::Identity,
            Some(e) if e == "gzip" => Encoding::Gzip,
            Some(e) if e == "deflate" => Encoding::Deflate,
            Some(e) => {
                debug!(encoding = %e, "proxied text/html in an encoding not understood: links not rewritten");
                return resp;
            }
        };
        let (mut head, body) = resp.into_parts();
        let (read, rest) = match collect_up_to(body, MAX_HTML_BODY).await {
            Ok(v) => v,
            Err(e) => {
                debug!(error = %e, "proxied text/html body broke off");
                return Response::from_parts(head, Body::empty());
            }
        };
        if let Some(rest) = rest {
            // Too long to hold: relayed as it came.
            let stream = futures::stream::once(async move { Ok::<_, axum::Error>(read) })
                .chain(rest.into_data_stream());
            return Response::from_parts(head, Body::from_stream(stream));
        }
        if read.is_empty() {
            // A HEAD, 204 or 304: its headers describe a body not sent.
            return Response::from_parts(head, Body::empty());
        }
        let rw = self.clone();
        let input = read.clone();
        let rewritten = tokio::task::spawn_blocking(move || rw.rewrite_encoded(&input, encoding))
            .await
            .ok()
            .flatten();
        let out = match rewritten {
            Some(b) => Bytes::from(b),
            None => read,
        };
        head.headers.remove(header::CONTENT_LENGTH);
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Response::from_parts(head, Body::from(out))
    }

    /// `body` decoded, rewritten and encoded again; `None` when it does
    /// not decode or parse (the original is then relayed).
    fn rewrite_encoded(&self, body: &[u8], encoding: Encoding) -> Option<Vec<u8>> {
        let html = match encoding {
            Encoding::Identity => None,
            Encoding::Gzip => {
                let mut v = Vec::new();
                flate2::read::MultiGzDecoder::new(body)
                    .read_to_end(&mut v)
                    .ok()?;
                Some(v)
            }
            Encoding::Deflate => {
                // HTTP's `deflate` is zlib; some servers send raw deflate.
                let mut v = Vec::new();
                if flate2::read::ZlibDecoder::new(body)
                    .read_to_end(&mut v)
                    .is_err()
                {
                    v.clear();
                    flate2::read::DeflateDecoder::new(body)
                        .read_to_end(&mut v)
                        .ok()?;
                }
                Some(v)
            }
        };
        let out = match self.rewrite_html(html.as_deref().unwrap_or(body)) {
            Ok(o) => o,
            Err(e) => {
                debug!(error = %e, "proxied text/html did not parse: links not rewritten");
                return None;
            }
        };
        match encoding {
            Encoding::Identity => Some(out),
            Encoding::Gzip => {
                let mut w =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                w.write_all(&out).ok()?;
                w.finish().ok()
            }
            Encoding::Deflate => {
                let mut w =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                w.write_all(&out).ok()?;
                w.finish().ok()
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

/// Reads `body` until it ends (`rest` is `None`) or more than `limit`
/// bytes came (then `rest` is what is left of it).
async fn collect_up_to(mut body: Body, limit: usize) -> Result<(Bytes, Option<Body>), axum::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok((buf.freeze(), Some(body)));
            }
        }
    }
    Ok((buf.freeze(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw() -> LinkRewriter {
        LinkRewriter {
            prefix: "/api/v1/namespaces/d/pods/web:80/proxy".into(),
            backend: "10.42.0.7:80".into(),
            own_host: "127.0.0.1:6443".into(),
        }
    }

    #[test]
    fn urls_are_rewritten_as_upstream() {
        let r = rw();
        let p = "/api/v1/namespaces/d/pods/web:80/proxy";
        // An absolute path on no host, the backend or the apiserver.
        assert_eq!(r.rewrite_url("/login"), format!("{p}/login"));
        assert_eq!(r.rewrite_url("/a/b/?x=1#f"), format!("{p}/a/b/?x=1#f"));
        assert_eq!(r.rewrite_url("http://10.42.0.7:80/x/y"), format!("{p}/x/y"));
        assert_eq!(
            r.rewrite_url("https://127.0.0.1:6443/x"),
            format!("https://127.0.0.1:6443{p}/x")
        );
        assert_eq!(r.rewrite_url("/"), format!("{p}/"));
        // Cleaned as Go's path.Join cleans.
        assert_eq!(r.rewrite_url("/a/../b//c/./d"), format!("{p}/b/c/d"));
        // Already under the prefix.
        assert_eq!(r.rewrite_url(&format!("{p}/z")), format!("{p}/z"));
        // Left alone: relative, other hosts, no path, other schemes.
        for s in [
            "next",
            "../up",
            "?q=1",
            "#top",
            "",
            "https://example.org/a",
            "//cdn.example.org/lib.js",
            "http://10.42.0.7:80",
            "mailto:x@example.org",
            "javascript:void(0)",
            "data:image/png;base64,AAAA",
            ":nope",
        ] {
            assert_eq!(r.rewrite_url(s), s, "{s}");
        }
        // A scheme-relative reference to the backend is the backend.
        assert_eq!(r.rewrite_url("//10.42.0.7:80/s.css"), format!("{p}/s.css"));
    }

    #[test]
    fn html_url_attributes_are_rewritten() {
        let r = rw();
        let p = "/api/v1/namespaces/d/pods/web:80/proxy";
        let html = r##"<!DOCTYPE html><html><head><link rel="stylesheet" href="/s.css"><script src='/app.js'></script></head>
<body background="/bg.png"><a href="/docs?a=1&amp;b=2">docs</a> <a href="rel">rel</a> <a href="https://example.org/">out</a>
<img src="/i.png" alt="/not-a-url" usemap="#m"><form action="/submit" method="post"><button formaction="/other">b</button></form>
<div data-href="/untouched">/text/untouched</div><iframe src="http://10.42.0.7:80/f"></iframe><video poster="/p.jpg" src="/v.mp4"></video></body></html>"##;
        let out = String::from_utf8(r.rewrite_html(html.as_bytes()).unwrap()).unwrap();
        for want in [
            format!(r#"href="{p}/s.css""#),
            format!(r#"src="{p}/app.js""#),
            format!(r#"background="{p}/bg.png""#),
            format!(r#"href="{p}/docs?a=1&amp;b=2""#),
            r#"href="rel""#.to_string(),
            r#"href="https://example.org/""#.to_string(),
            format!(r#"src="{p}/i.png""#),
            r#"alt="/not-a-url""#.to_string(),
            r##"usemap="#m""##.to_string(),
            format!(r#"action="{p}/submit""#),
            format!(r#"formaction="{p}/other""#),
            r#"data-href="/untouched""#.to_string(),
            ">/text/untouched<".to_string(),
            format!(r#"<iframe src="{p}/f""#),
            format!(r#"poster="{p}/p.jpg""#),
            format!(r#"src="{p}/v.mp4""#),
            "<!DOCTYPE html>".to_string(),
        ] {
            assert!(out.contains(&want), "{want} in {out}");
        }
    }

    fn html_response(body: Vec<u8>, encoding: Option<&str>) -> Response {
        let mut b = Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CONTENT_LENGTH, body.len())
            .header("access-control-allow-origin", "*");
        if let Some(e) = encoding {
            b = b.header(header::CONTENT_ENCODING, e);
        }
        b.body(Body::from(body)).unwrap()
    }

    async fn body_of(resp: Response) -> Vec<u8> {
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn responses_plain_gzip_deflate_and_others() {
        let r = rw();
        let p = "/api/v1/namespaces/d/pods/web:80/proxy";
        let page = br#"<a href="/x">x</a>"#.to_vec();
        let want = format!(r#"<a href="{p}/x">x</a>"#);

        let out = r.rewrite_response(html_response(page.clone(), None)).await;
        assert!(out.headers().get("access-control-allow-origin").is_none());
        assert_eq!(
            out.headers()[header::CONTENT_LENGTH],
            want.len().to_string().as_str()
        );
        assert_eq!(body_of(out).await, want.as_bytes());

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&page).unwrap();
        let out = r
            .rewrite_response(html_response(gz.finish().unwrap(), Some("gzip")))
            .await;
        assert_eq!(out.headers()[header::CONTENT_ENCODING], "gzip");
        let mut got = String::new();
        flate2::read::GzDecoder::new(&body_of(out).await[..])
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, want);

        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&page).unwrap();
        let out = r
            .rewrite_response(html_response(z.finish().unwrap(), Some("deflate")))
            .await;
        let mut got = String::new();
        flate2::read::ZlibDecoder::new(&body_of(out).await[..])
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, want);

        // An encoding not understood, a gzip that is not, and a type that
        // is not HTML: relayed unchanged.
        let out = r
            .rewrite_response(html_response(page.clone(), Some("br")))
            .await;
        assert_eq!(body_of(out).await, page);
        let out = r
            .rewrite_response(html_response(page.clone(), Some("gzip")))
            .await;
        assert_eq!(body_of(out).await, page);
        let json = Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"href":"/x"}"#))
            .unwrap();
        assert_eq!(
            body_of(r.rewrite_response(json).await).await,
            br#"{"href":"/x"}"#
        );

        // No body (a HEAD): the headers stay as the backend sent them.
        let head_resp = Response::builder()
            .header(header::CONTENT_TYPE, "text/html")
            .header(header::CONTENT_LENGTH, "1234")
            .body(Body::empty())
            .unwrap();
        let out = r.rewrite_response(head_resp).await;
        assert_eq!(out.headers()[header::CONTENT_LENGTH], "1234");
        assert!(body_of(out).await.is_empty());

        // A redirect: Location rewritten, body left alone.
        let redirect = Response::builder()
            .status(302)
            .header(header::LOCATION, "/landing")
            .header(header::CONTENT_TYPE, "text/html")
            .body(Body::from(page.clone()))
            .unwrap();
        let out = r.rewrite_response(redirect).await;
        assert_eq!(
            out.headers()[header::LOCATION],
            format!("{p}/landing").as_str()
        );
        assert_eq!(body_of(out).await, page);
    }

    #[tokio::test]
    async fn long_html_is_relayed_whole_and_unchanged() {
        let r = rw();
        let mut page = br#"<a href="/x">x</a>"#.to_vec();
        page.resize(MAX_HTML_BODY + 10, b' ');
        let chunks: Vec<Result<Bytes, std::io::Error>> = page
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, "text/html")
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .unwrap();
        let out = body_of(r.rewrite_response(resp).await).await;
        assert_eq!(out.len(), page.len());
        assert!(out == page);
    }
}
