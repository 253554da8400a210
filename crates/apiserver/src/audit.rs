//! The audit log, as kube-apiserver's log backend writes it under an
//! `audit.k8s.io/v1` Policy (RKE2's `audit-policy-file`; the log is
//! `<data-dir>/server/logs/audit.log`).
//!
//! Every authenticated request is matched against the policy's rules in
//! order; the first rule that matches gives its level, and a request at
//! level `None` costs nothing more. Others produce JSON-lines `Event`s: the
//! `RequestReceived` stage (unless omitted) and `ResponseComplete` — or
//! `ResponseStarted` for a watch or a stream, written when its response
//! starts. The user is the authenticated one; an impersonated user is
//! recorded apart (`impersonatedUser`), so who acted is never hidden.
//!
//! Levels `Request` and `RequestResponse` are recorded as `Metadata`: the
//! bodies are not kept (a known gap). The file is 0600 and rotated by
//! size, keeping a bounded number of backups.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Value, json};

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    /// Nothing.
    None,
    /// Who, what, when and the answer's code.
    Metadata,
    /// Metadata and the request body (recorded as Metadata here).
    Request,
    /// Metadata and both bodies (recorded as Metadata here).
    RequestResponse,
}

/// A stage of a request's handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Stage {
    /// As soon as the request is authenticated.
    RequestReceived,
    /// Headers of a long-running response sent.
    ResponseStarted,
    /// The response is complete.
    ResponseComplete,
    /// The handler panicked.
    Panic,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyDoc {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    #[allow(dead_code)]
    omit_managed_fields: bool,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Value,
}

/// A parsed audit policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_stages: Vec<Stage>,
}

/// The policy RKE2 writes when `audit-policy-file` does not exist: log
/// nothing, until an administrator says otherwise.
pub const DEFAULT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nmetadata:\n  creationTimestamp: null\nrules:\n- level: None\n";

/// What the policy is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The authenticated user's name.
    pub user: &'a str,
    /// Their groups.
    pub groups: &'a [String],
    /// The request's verb (`get`, `list`, `watch`, `create`, …; the
    /// lower-cased method for a non-resource request).
    pub verb: &'a str,
    /// The object named, for a resource request.
    pub object: Option<ObjectRef<'a>>,
    /// The URL path.
    pub path: &'a str,
}

/// The object of a resource request.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    /// API group ("" for the core group).
    pub group: &'a str,
    /// API version.
    pub version: &'a str,
    /// Plural resource name.
    pub resource: &'a str,
    /// Subresource, if any.
    pub subresource: Option<&'a str>,
    /// Namespace, if any.
    pub namespace: Option<&'a str>,
    /// Object name, if any.
    pub name: Option<&'a str>,
}

impl Policy {
    /// Parses a policy file's text (YAML or JSON); the error names the
    /// field that is wrong.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let doc: PolicyDoc = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if doc.kind != "Policy" {
            return Err(format!("kind: want Policy, got {:?}", doc.kind));
        }
        if !matches!(doc.api_version.as_str(), "audit.k8s.io/v1") {
            return Err(format!(
                "apiVersion: want audit.k8s.io/v1, got {:?}",
                doc.api_version
            ));
        }
        for (i, r) in doc.rules.iter().enumerate() {
            if !r.non_resource_urls.is_empty()
                && (!r.resources.is_empty() || !r.namespaces.is_empty())
            {
                return Err(format!(
                    "rules[{i}].nonResourceURLs: rules cannot apply to both regular resources and non-resource URLs"
                ));
            }
            for (j, u) in r.non_resource_urls.iter().enumerate() {
                if !u.starts_with('/') && u != "*" {
                    return Err(format!(
                        "rules[{i}].nonResourceURLs[{j}]: Invalid value: {u:?}: non-resource URL rules must begin with a '/' character"
                    ));
                }
                if u.len() > 1 && u[..u.len() - 1].contains('*') {
                    return Err(format!(
                        "rules[{i}].nonResourceURLs[{j}]: Invalid value: {u:?}: non-resource URL wildcards ('*') must be the final character of the rule"
                    ));
                }
            }
            for (j, g) in r.resources.iter().enumerate() {
                for (k, res) in g.resources.iter().enumerate() {
                    if res.contains('*')
                        && res != "*"
                        && !res.starts_with("*/")
                        && !res.ends_with("/*")
                    {
                        return Err(format!(
                            "rules[{i}].resources[{j}].resources[{k}]: Invalid value: {res:?}: wildcards are only allowed as \"*\", \"*/subresource\" or \"resource/*\""
                        ));
                    }
                }
                if !g.resource_names.is_empty() && g.resources.iter().any(|r| r.contains('*')) {
                    return Err(format!(
                        "rules[{i}].resources[{j}].resourceNames: Invalid value: resource names cannot be used with wildcard resources"
                    ));
                }
            }
            let _ = r.omit_managed_fields;
        }
        Ok(Policy {
            rules: doc.rules,
            omit_stages: doc.omit_stages,
        })
    }

    /// True when no request can be recorded (every rule is `None`).
    pub fn records_nothing(&self) -> bool {
        self.rules.iter().all(|r| r.level == Level::None)
    }

    /// The level and the stages to leave out for a request: the first
    /// matching rule's, `None` when no rule matches.
    pub fn level_of(&self, a: &Attributes) -> (Level, Vec<Stage>) {
        for r in &self.rules {
            if rule_matches(r, a) {
                let mut omit = self.omit_stages.clone();
                omit.extend(r.omit_stages.iter().copied());
                return (r.level, omit);
            }
        }
        (Level::None, Vec::new())
    }
}

fn rule_matches(r: &Rule, a: &Attributes) -> bool {
    if !r.users.is_empty() && !r.users.iter().any(|u| u == a.user) {
        return false;
    }
    if !r.user_groups.is_empty() && !r.user_groups.iter().any(|g| a.groups.contains(g)) {
        return false;
    }
    if !r.verbs.is_empty() && !r.verbs.iter().any(|v| v == a.verb) {
        return false;
    }
    match &a.object {
        Some(o) => {
            if !r.non_resource_urls.is_empty() {
                return false;
            }
            if !r.namespaces.is_empty()
                && !r
                    .namespaces
                    .iter()
                    .any(|n| n.as_str() == o.namespace.unwrap_or(""))
            {
                return false;
            }
            if r.resources.is_empty() {
                return true;
            }
            r.resources.iter().any(|g| group_matches(g, o))
        }
        None => {
            if !r.resources.is_empty() || !r.namespaces.is_empty() {
                return false;
            }
            if r.non_resource_urls.is_empty() {
                return true;
            }
            r.non_resource_urls.iter().any(|u| {
                u == "*"
                    || u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            })
        }
    }
}

fn group_matches(g: &GroupResources, o: &ObjectRef) -> bool {
    if g.group != o.group {
        return false;
    }
    if !g.resources.is_empty() {
        let full = match o.subresource {
            Some(s) => format!("{}/{s}", o.resource),
            None => o.resource.to_string(),
        };
        let hit = g.resources.iter().any(|r| {
            r == "*"
                || *r == full
                || (r.ends_with("/*") && o.subresource.is_some() && r[..r.len() - 2] == *o.resource)
                || r.strip_prefix("*/")
                    .is_some_and(|s| o.subresource == Some(s))
        });
        if !hit {
            return false;
        }
    }
    if !g.resource_names.is_empty() {
        return o
            .name
            .is_some_and(|n| g.resource_names.iter().any(|x| x == n));
    }
    true
}

/// The size at which the log is rotated (RKE2's `audit-log-maxsize` 100 MB).
pub const MAX_SIZE: u64 = 100 * 1024 * 1024;
/// Rotated files kept (RKE2's `audit-log-maxbackup` 10).
pub const MAX_BACKUPS: usize = 10;

#[derive(Debug)]
struct Sink {
    file: std::fs::File,
    size: u64,
}

/// The audit log: a policy and the file its events go to.
#[derive(Debug)]
pub struct AuditLog {
    policy: Policy,
    path: PathBuf,
    max_size: u64,
    sink: Mutex<Option<Sink>>,
}

/// `(group, version, resource, subresource, namespace, name)` of an
/// audited resource request.
pub type AuditedObject = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// One request being audited, filled in as its handling learns more.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Audit-ID of the request.
    pub id: String,
    /// When it arrived.
    pub received: SystemTime,
    /// The authenticated user and groups.
    pub user: (String, Vec<String>),
    /// The impersonated user and groups, if any.
    pub impersonated: Option<(String, Vec<String>)>,
    /// The verb.
    pub verb: String,
    /// `(group, version, resource, subresource, namespace, name)`.
    pub object: Option<AuditedObject>,
    /// Path and query.
    pub uri: String,
    /// The peer's address.
    pub source_ip: Option<String>,
    /// The User-Agent.
    pub user_agent: Option<String>,
    /// Whether the response is a stream (a watch, logs, exec).
    pub streaming: bool,
}

fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let micros = d.subsec_micros();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A random version-4 UUID (upstream's Audit-ID form).
pub fn new_audit_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl AuditLog {
    /// An audit log writing to `path` (created 0600 on first event).
    pub fn new(policy: Policy, path: &Path) -> AuditLog {
        AuditLog {
            policy,
            path: path.to_path_buf(),
            max_size: MAX_SIZE,
            sink: Mutex::new(None),
        }
    }

    /// The same with a rotation size of `bytes` (tests).
    pub fn with_max_size(mut self, bytes: u64) -> AuditLog {
        self.max_size = bytes;
        self
    }

    /// True when the policy can record nothing: requests skip auditing.
    pub fn records_nothing(&self) -> bool {
        self.policy.records_nothing()
    }

    /// Records a finished (or started, when streaming) request with its
    /// response code, if the policy wants it.
    pub fn record(&self, p: &Pending, code: u16) {
        let object = p.object.as_ref().map(|(g, v, r, s, ns, n)| ObjectRef {
            group: g,
            version: v,
            resource: r,
            subresource: s.as_deref(),
            namespace: ns.as_deref(),
            name: n.as_deref(),
        });
        let path = p.uri.split('?').next().unwrap_or("");
        let attrs = Attributes {
            user: &p.user.0,
            groups: &p.user.1,
            verb: &p.verb,
            object,
            path,
        };
        let (level, omit) = self.policy.level_of(&attrs);
        if level == Level::None {
            return;
        }
        let now = SystemTime::now();
        let mut ev = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": p.id,
            "requestURI": p.uri,
            "verb": p.verb,
            "user": {"username": p.user.0, "groups": p.user.1},
            "sourceIPs": p.source_ip.iter().collect::<Vec<_>>(),
            "requestReceivedTimestamp": timestamp(p.received),
        });
        if let Some(ua) = &p.user_agent {
            ev["userAgent"] = json!(ua);
        }
        if let Some((u, g)) = &p.impersonated {
            ev["impersonatedUser"] = json!({"username": u, "groups": g});
        }
        if let Some(o) = &object {
            let mut r = json!({"resource": o.resource, "apiVersion": o.version});
            if !o.group.is_empty() {
                r["apiGroup"] = json!(o.group);
            }
            if let Some(s) = o.subresource {
                r["subresource"] = json!(s);
            }
            if let Some(n) = o.namespace {
                r["namespace"] = json!(n);
            }
            if let Some(n) = o.name {
                r["name"] = json!(n);
            }
            ev["objectRef"] = r;
        }
        let decision = if code == 403 { "forbid" } else { "allow" };
        ev["annotations"] = json!({"authorization.k8s.io/decision": decision});
        let mut lines = String::new();
        if !omit.contains(&Stage::RequestReceived) {
            let mut e = ev.clone();
            e["stage"] = json!(Stage::RequestReceived.as_str());
            e["stageTimestamp"] = json!(timestamp(p.received));
            e.as_object_mut().expect("object").remove("annotations");
            lines.push_str(&e.to_string());
            lines.push('\n');
        }
        let last = if p.streaming && code < 300 {
            Stage::ResponseStarted
        } else {
            Stage::ResponseComplete
        };
        if !omit.contains(&last) {
            ev["stage"] = json!(last.as_str());
            ev["stageTimestamp"] = json!(timestamp(now));
            ev["responseStatus"] = json!({"metadata": {}, "code": code});
            lines.push_str(&ev.to_string());
            lines.push('\n');
        }
        if !lines.is_empty() {
            self.append(lines.as_bytes());
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if sink
            .as_ref()
            .is_some_and(|s| s.size + bytes.len() as u64 > self.max_size)
        {
            *sink = None;
            self.rotate();
        }
        if sink.is_none() {
            match open_log(&self.path) {
                Ok(s) => *sink = Some(s),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open the audit log");
                    return;
                }
            }
        }
        let s = sink.as_mut().expect("opened");
        match s.file.write_all(bytes) {
            Ok(()) => s.size += bytes.len() as u64,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "writing the audit log");
                *sink = None;
            }
        }
    }

    /// Moves the log aside as `audit-<timestamp>.log` and drops the oldest
    /// backups beyond [`MAX_BACKUPS`].
    fn rotate(&self) {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audit".into());
        let stamp = timestamp(SystemTime::now()).replace(':', "-");
        let backup = dir.join(format!("{stem}-{stamp}.log"));
        if let Err(e) = std::fs::rename(&self.path, &backup) {
            tracing::warn!(error = %e, "rotating the audit log");
            return;
        }
        let prefix = format!("{stem}-");
        let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".log"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        // The timestamp in the name sorts as time.
        backups.sort();
        while backups.len() > MAX_BACKUPS {
            let old = backups.remove(0);
            let _ = std::fs::remove_file(old);
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<Sink> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok(Sink { file, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(
        user: &'a str,
        groups: &'a [String],
        verb: &'a str,
        o: Option<ObjectRef<'a>>,
        path: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            user,
            groups,
            verb,
            object: o,
            path,
        }
    }

    fn pods<'a>(sub: Option<&'a str>, ns: Option<&'a str>, name: Option<&'a str>) -> ObjectRef<'a> {
        ObjectRef {
            group: "",
            version: "v1",
            resource: "pods",
            subresource: sub,
            namespace: ns,
            name,
        }
    }

    #[test]
    fn the_first_matching_rule_gives_the_level() {
        let p = Policy::parse(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["pods/log", "pods/status"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets", "configmaps"]
- level: None
  nonResourceURLs: ["/healthz*", "/version"]
- level: Request
  verbs: ["create"]
  namespaces: ["kube-system"]
- level: Metadata
  userGroups: ["system:masters"]
"#,
        )
        .unwrap();
        let none: Vec<String> = vec![];
        let masters = vec!["system:masters".to_string()];
        let lv = |a: &Attributes| p.level_of(a).0;
        assert_eq!(
            lv(&attrs(
                "system:kube-proxy",
                &masters,
                "get",
                Some(pods(None, Some("a"), Some("p"))),
                "/"
            )),
            Level::None
        );
        assert_eq!(
            lv(&attrs(
                "bob",
                &none,
                "get",
                Some(pods(Some("log"), Some("a"), Some("p"))),
                "/"
            )),
            Level::RequestResponse
        );
        assert_eq!(
            lv(&attrs(
                "bob",
                &none,
                "get",
                Some(pods(Some("exec"), Some("a"), Some("p"))),
                "/"
            )),
            Level::None
        );
        let secrets = ObjectRef {
            resource: "secrets",
            ..pods(None, Some("a"), None)
        };
        assert_eq!(
            lv(&attrs("bob", &none, "list", Some(secrets), "/")),
            Level::Metadata
        );
        assert_eq!(
            lv(&attrs("bob", &masters, "get", None, "/healthz/etcd")),
            Level::None
        );
        assert_eq!(
            lv(&attrs(
                "bob",
                &none,
                "create",
                Some(pods(None, Some("kube-system"), None)),
                "/"
            )),
            Level::Request
        );
        assert_eq!(
            lv(&attrs(
                "bob",
                &none,
                "create",
                Some(pods(None, Some("default"), None)),
                "/"
            )),
            Level::None
        );
        // A non-resource request matches no rule with namespaces.
        assert_eq!(
            lv(&attrs("bob", &none, "create", None, "/apis")),
            Level::None
        );
        assert_eq!(
            lv(&attrs("bob", &masters, "get", None, "/apis")),
            Level::Metadata
        );
        assert!(
            p.level_of(&attrs("bob", &masters, "get", None, "/apis"))
                .1
                .contains(&Stage::RequestReceived)
        );
        assert!(!p.records_nothing());
        assert!(Policy::parse(DEFAULT_POLICY).unwrap().records_nothing());
    }

    #[test]
    fn subresource_wildcards_and_names() {
        let p = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  resources:\n  - group: \"\"\n    resources: [\"*/status\"]\n- level: Request\n  resources:\n  - group: \"\"\n    resources: [\"pods/*\"]\n- level: RequestResponse\n  resources:\n  - group: \"\"\n    resources: [\"configmaps\"]\n    resourceNames: [\"controller-leader\"]\n",
        )
        .unwrap();
        let g: Vec<String> = vec![];
        let lv = |a: &Attributes| p.level_of(a).0;
        assert_eq!(
            lv(&attrs(
                "u",
                &g,
                "update",
                Some(pods(Some("status"), Some("a"), Some("p"))),
                "/"
            )),
            Level::Metadata
        );
        assert_eq!(
            lv(&attrs(
                "u",
                &g,
                "get",
                Some(pods(Some("log"), Some("a"), Some("p"))),
                "/"
            )),
            Level::Request
        );
        assert_eq!(
            lv(&attrs(
                "u",
                &g,
                "get",
                Some(pods(None, Some("a"), Some("p"))),
                "/"
            )),
            Level::None
        );
        let cm = |n| ObjectRef {
            resource: "configmaps",
            ..pods(None, Some("a"), n)
        };
        assert_eq!(
            lv(&attrs(
                "u",
                &g,
                "get",
                Some(cm(Some("controller-leader"))),
                "/"
            )),
            Level::RequestResponse
        );
        assert_eq!(
            lv(&attrs("u", &g, "get", Some(cm(Some("other"))), "/")),
            Level::None
        );
        assert_eq!(
            lv(&attrs("u", &g, "list", Some(cm(None)), "/")),
            Level::None
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        for (text, needle) in [
            ("apiVersion: audit.k8s.io/v1\nkind: Nope\n", "kind"),
            (
                "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\n",
                "apiVersion",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n",
                "Loud",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  colour: red\n",
                "colour",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [\"healthz\"]\n",
                "rules[0].nonResourceURLs[0]",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [\"/a*b\"]\n",
                "final character",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [\"/a\"]\n  namespaces: [x]\n",
                "both",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  resources:\n  - resources: [\"*\"]\n    resourceNames: [a]\n",
                "resourceNames",
            ),
            ("rules: [", ""),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn events_name_the_impersonator_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.log");
        let policy =
            Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n")
                .unwrap();
        let log = AuditLog::new(policy, &path).with_max_size(3000);
        let p = Pending {
            id: new_audit_id(),
            received: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_micros(1_700_000_000_123_456),
            user: ("admin".into(), vec!["system:masters".into()]),
            impersonated: Some(("bob".into(), vec!["dev".into()])),
            verb: "list".into(),
            object: Some((
                "apps".into(),
                "v1".into(),
                "deployments".into(),
                None,
                Some("a".into()),
                None,
            )),
            uri: "/apis/apps/v1/namespaces/a/deployments?limit=500".into(),
            source_ip: Some("127.0.0.1".into()),
            user_agent: Some("kubectl/v1.35.0".into()),
            streaming: false,
        };
        log.record(&p, 403);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["stage"], "RequestReceived");
        assert_eq!(lines[0]["stageTimestamp"], "2023-11-14T22:13:20.123456Z");
        let done = &lines[1];
        assert_eq!(done["stage"], "ResponseComplete");
        assert_eq!(done["user"]["username"], "admin");
        assert_eq!(done["impersonatedUser"]["username"], "bob");
        assert_eq!(
            done["objectRef"],
            json!({"resource": "deployments", "apiGroup": "apps", "apiVersion": "v1", "namespace": "a"})
        );
        assert_eq!(done["responseStatus"]["code"], 403);
        assert_eq!(
            done["annotations"]["authorization.k8s.io/decision"],
            "forbid"
        );
        assert_eq!(done["auditID"].as_str().unwrap().len(), 36);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Past the size, the file is moved aside and a new one begun; at
        // most MAX_BACKUPS old files are kept.
        for _ in 0..40 {
            log.record(&p, 200);
        }
        let files = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert!(files > 1 && files <= MAX_BACKUPS + 1, "{files} files");
        assert!(std::fs::metadata(&path).unwrap().len() <= 3000);
    }

    #[test]
    fn timestamps_are_rfc3339_micro() {
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
