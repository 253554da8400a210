//! PodSecurity admission, as kube-apiserver's built-in plugin
//! (`k8s.io/pod-security-admission`) runs it.
//!
//! A namespace's `pod-security.kubernetes.io/{enforce,audit,warn}` labels
//! (with `-version` companions) pick a level of the Pod Security Standards
//! per mode, falling back to the cluster defaults of [`PodSecurityConfig`].
//! A pod created (or updated in a way that matters: containers or images)
//! against the `enforce` level is refused with 403; the `warn` level's
//! findings go back as `Warning` headers. Workload resources with a pod
//! template are only warned about, never refused: their pods are checked
//! when the controller creates them. Namespace writes have their labels
//! validated, and a tightened `enforce` level is tried on the pods already
//! in the namespace, which answers with warnings.
//!
//! The checks themselves are in [`policy`]; the configuration file in
//! [`config`].

pub mod config;
pub mod policy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use config::{ConfigFileError, Exemptions, PodSecurityConfig};
use policy::{Findings, Level, LevelVersion, Version};

use crate::handlers::Ctx;
use crate::objects::name_of;
use crate::registry::{self, ResourceType};
use crate::status::{ApiError, ApiResult};

/// `pod-security.kubernetes.io/enforce`.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// `pod-security.kubernetes.io/enforce-version`.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
/// `pod-security.kubernetes.io/audit`.
pub const AUDIT_LABEL: &str = "pod-security.kubernetes.io/audit";
/// `pod-security.kubernetes.io/audit-version`.
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
/// `pod-security.kubernetes.io/warn`.
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
/// `pod-security.kubernetes.io/warn-version`.
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";

/// The level and version of each mode for one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Violations refuse the pod.
    pub enforce: LevelVersion,
    /// Violations are recorded in the audit log (which this server does
    /// not keep: see ARCHITECTURE.md).
    pub audit: LevelVersion,
    /// Violations come back as warnings.
    pub warn: LevelVersion,
}

impl Policy {
    /// `privileged:latest` for every mode.
    pub fn privileged() -> Self {
        Self {
            enforce: LevelVersion::PRIVILEGED,
            audit: LevelVersion::PRIVILEGED,
            warn: LevelVersion::PRIVILEGED,
        }
    }

    /// No mode checks anything.
    pub fn fully_privileged(&self) -> bool {
        [self.enforce, self.audit, self.warn]
            .iter()
            .all(|lv| lv.level == Level::Privileged)
    }

    /// Every mode evaluates the same as the other's.
    pub fn equivalent(&self, other: &Policy) -> bool {
        self.enforce.equivalent(&other.enforce)
            && self.audit.equivalent(&other.audit)
            && self.warn.equivalent(&other.warn)
    }
}

/// A PodSecurity label whose value does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelError {
    /// The label key.
    pub label: &'static str,
    /// Its value.
    pub value: String,
    /// Upstream's reason.
    pub message: String,
}

/// The policy a namespace's labels select over `defaults`, and the labels
/// that do not parse. As upstream: a bad `enforce` level enforces
/// `restricted`, a bad version means `latest`, bad `audit`/`warn` levels
/// fail open (`privileged`); and an `enforce` level set by label stricter
/// than the warn level also warns, unless `warn` is labelled itself.
pub fn policy_for(labels: &Value, defaults: &Policy) -> (Policy, Vec<LabelError>) {
    let mut p = *defaults;
    let mut errs = Vec::new();
    let Some(labels) = labels.as_object().filter(|l| !l.is_empty()) else {
        return (p, errs);
    };
    let get = |k: &str| labels.get(k).map(|v| v.as_str().unwrap_or(""));
    let mut record = |label: &'static str, value: &str, e: String| {
        errs.push(LabelError {
            label,
            value: value.to_string(),
            message: e,
        })
    };
    let level =
        |v: &str, fallback: Level, record: &mut dyn FnMut(&'static str, &str, String), label| {
            Level::parse(v).unwrap_or_else(|e| {
                record(label, v, e);
                fallback
            })
        };
    let version = |v: &str, record: &mut dyn FnMut(&'static str, &str, String), label| {
        Version::parse(v).unwrap_or_else(|e| {
            record(label, v, e);
            Version::Latest
        })
    };
    let mut has_enforce_level = false;
    if let Some(v) = get(ENFORCE_LABEL) {
        has_enforce_level = Level::parse(v).is_ok();
        p.enforce.level = level(v, Level::Restricted, &mut record, ENFORCE_LABEL);
    }
    if let Some(v) = get(ENFORCE_VERSION_LABEL) {
        p.enforce.version = version(v, &mut record, ENFORCE_VERSION_LABEL);
    }
    if let Some(v) = get(AUDIT_LABEL) {
        p.audit.level = level(v, Level::Privileged, &mut record, AUDIT_LABEL);
    }
    if let Some(v) = get(AUDIT_VERSION_LABEL) {
        p.audit.version = version(v, &mut record, AUDIT_VERSION_LABEL);
    }
    let has_warn_level = get(WARN_LABEL).is_some();
    if let Some(v) = get(WARN_LABEL) {
        p.warn.level = level(v, Level::Privileged, &mut record, WARN_LABEL);
    }
    let has_warn_version = get(WARN_VERSION_LABEL).is_some();
    if let Some(v) = get(WARN_VERSION_LABEL) {
        p.warn.version = version(v, &mut record, WARN_VERSION_LABEL);
    }
    if !has_warn_level && has_enforce_level && p.enforce.level > p.warn.level {
        p.warn.level = p.enforce.level;
        if !has_warn_version {
            p.warn.version = p.enforce.version;
        }
    }
    (p, errs)
}

/// The outcome of checking one pod or template: refused (the message
/// after `is forbidden: `) or allowed with warnings.
pub fn check_pod(
    cfg: &PodSecurityConfig,
    policy: &Policy,
    meta: &Value,
    spec: &Value,
    enforce: bool,
) -> Result<Vec<String>, String> {
    if let Some(rc) = spec["runtimeClassName"].as_str().filter(|s| !s.is_empty())
        && cfg.exemptions.runtime_classes.iter().any(|r| r == rc)
    {
        return Ok(Vec::new());
    }
    let mut results: HashMap<LevelVersion, Findings> = HashMap::new();
    if enforce {
        let f = policy::evaluate(policy.enforce, meta, spec);
        if !f.allowed() {
            return Err(format!(
                "violates PodSecurity {}: {}",
                quote(&policy.enforce),
                f.detail()
            ));
        }
        results.insert(policy.enforce, f);
    }
    // The audit mode's findings would go to the audit log, which this
    // server does not keep.
    let warn = results
        .remove(&policy.warn)
        .unwrap_or_else(|| policy::evaluate(policy.warn, meta, spec));
    Ok(if warn.allowed() {
        Vec::new()
    } else {
        vec![format!(
            "would violate PodSecurity {}: {}",
            quote(&policy.warn),
            warn.detail()
        )]
    })
}

fn quote(lv: &LevelVersion) -> String {
    crate::schema::go_quote(&lv.to_string())
}

/// Pod subresources PodSecurity never looks at (upstream's list); any
/// other subresource of a pod is checked as the pod.
const IGNORED_POD_SUBRESOURCES: &[&str] = &[
    "exec",
    "attach",
    "binding",
    "eviction",
    "log",
    "portforward",
    "proxy",
    "status",
];

/// PodSecurity admission of a create (`old` is `None`) or update of any
/// object; only namespaces, pods and workloads with a pod template are
/// looked at. Runs after the mutating steps, also for dry runs. Warnings
/// are added to the request's answer.
pub async fn admit(ctx: &Ctx<'_>, old: Option<&Value>, new: &Value) -> ApiResult<()> {
    let rt = &*ctx.path.rt;
    let sub = ctx.path.subresource.as_deref();
    let warnings = match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => {
            if sub.is_some() {
                return Ok(());
            }
            admit_namespace(ctx, old, new).await?
        }
        ("", "pods") => {
            if sub.is_some_and(|s| IGNORED_POD_SUBRESOURCES.contains(&s)) {
                return Ok(());
            }
            admit_pod(ctx, old, new).await?
        }
        _ => match template_of(rt, new) {
            Some(Some((meta, spec))) if sub.is_none() => admit_template(ctx, meta, spec).await,
            _ => return Ok(()),
        },
    };
    for w in warnings {
        ctx.warnings.push(w);
    }
    Ok(())
}

fn exempt(cfg: &PodSecurityConfig, ctx: &Ctx<'_>, namespace: &str) -> bool {
    let ns_exempt =
        !namespace.is_empty() && cfg.exemptions.namespaces.iter().any(|n| n == namespace);
    // The user after impersonation, as upstream's attributes give it.
    let user = &ctx.identity.user;
    let user_exempt = !user.is_empty() && cfg.exemptions.usernames.contains(user);
    ns_exempt || user_exempt
}

async fn admit_pod(ctx: &Ctx<'_>, old: Option<&Value>, new: &Value) -> ApiResult<Vec<String>> {
    let cfg = &ctx.state.config().pod_security;
    let ns = ctx.path.namespace.as_deref().unwrap_or("");
    if exempt(cfg, ctx, ns) {
        return Ok(Vec::new());
    }
    if let Some(old) = old
        && !significant_pod_update(old, new)
    {
        return Ok(Vec::new());
    }
    let labels = match namespace_labels(ctx, ns).await {
        Ok(Some(l)) => l,
        _ => {
            return Err(ApiError::internal(format!(
                "Internal error occurred: failed to lookup namespace {}",
                crate::schema::go_quote(ns)
            )));
        }
    };
    let (policy, errs) = policy_for(&labels, &cfg.defaults);
    if errs.is_empty() && policy.fully_privileged() {
        return Ok(Vec::new());
    }
    check_pod(cfg, &policy, &new["metadata"], &new["spec"], true).map_err(|message| {
        let rt = &*ctx.path.rt;
        let name = name_of(new);
        let mut e = ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} {} is forbidden: {message}",
                rt.qualified(),
                crate::schema::go_quote(name)
            ),
        );
        e.details = Some(serde_json::json!({"name": name, "group": rt.group, "kind": rt.plural}));
        e
    })
}

async fn admit_template(ctx: &Ctx<'_>, meta: &Value, spec: &Value) -> Vec<String> {
    let cfg = &ctx.state.config().pod_security;
    let ns = ctx.path.namespace.as_deref().unwrap_or("");
    if exempt(cfg, ctx, ns) {
        return Vec::new();
    }
    // Workloads are never refused; a namespace that cannot be read only
    // costs the warning.
    let Ok(Some(labels)) = namespace_labels(ctx, ns).await else {
        return Vec::new();
    };
    let (policy, errs) = policy_for(&labels, &cfg.defaults);
    if errs.is_empty()
        && policy.warn.level == Level::Privileged
        && policy.audit.level == Level::Privileged
    {
        return Vec::new();
    }
    check_pod(cfg, &policy, meta, spec, false).unwrap_or_default()
}

/// The pod template of a workload upstream checks (`Some(None)`: a type
/// that may carry one but this object has none); `None` for other types.
fn template_of<'a>(rt: &ResourceType, obj: &'a Value) -> Option<Option<(&'a Value, &'a Value)>> {
    let template = match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "podtemplates") => &obj["template"],
        ("", "replicationcontrollers")
        | ("apps", "replicasets" | "deployments" | "statefulsets" | "daemonsets")
        | ("batch", "jobs") => &obj["spec"]["template"],
        ("batch", "cronjobs") => &obj["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    Some((!template.is_null()).then(|| (&template["metadata"], &template["spec"])))
}

/// Whether a pod update can change what the checks see: upstream looks
/// only at the containers' number and images (the only spec fields a pod
/// update may change) and at ephemeral containers added or changed.
fn significant_pod_update(old: &Value, new: &Value) -> bool {
    let list = |pod: &Value, k: &str| pod["spec"][k].as_array().cloned().unwrap_or_default();
    for k in ["containers", "initContainers"] {
        let (a, b) = (list(new, k), list(old, k));
        if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x["image"] != y["image"]) {
            return true;
        }
    }
    let old_eph = list(old, "ephemeralContainers");
    list(new, "ephemeralContainers").iter().any(|c| {
        match old_eph.iter().find(|o| o["name"] == c["name"]) {
            None => true,
            Some(o) => o["image"] != c["image"],
        }
    })
}

/// The labels of namespace `ns` (`None` when it does not exist): from the
/// watch cache, as upstream reads them from its informer (a label changed
/// a moment ago may not count yet), else from etcd (a namespace created a
/// moment ago).
async fn namespace_labels(ctx: &Ctx<'_>, ns: &str) -> ApiResult<Option<Value>> {
    let nsrt = registry::find("", "v1", "namespaces").expect("namespaces registered");
    let key = nsrt.key(None, ns);
    if let Some((obj, _)) = ctx.state.caches.running(nsrt).and_then(|c| c.get(&key)) {
        return Ok(Some(obj["metadata"]["labels"].clone()));
    }
    let Some(kv) = ctx.state.store.get(&key).await? else {
        return Ok(None);
    };
    let obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
    Ok(Some(obj["metadata"]["labels"].clone()))
}

async fn admit_namespace(
    ctx: &Ctx<'_>,
    old: Option<&Value>,
    new: &Value,
) -> ApiResult<Vec<String>> {
    let cfg = &ctx.state.config().pod_security;
    let name = name_of(new);
    let labels = &new["metadata"]["labels"];
    let (new_policy, new_errs) = policy_for(labels, &cfg.defaults);
    let invalid = || label_errors(&ctx.path.rt, name, &new_errs);
    // A namespace is its own namespace here, as in upstream's admission.
    let exempt_ns = cfg.exemptions.namespaces.iter().any(|n| n == name);
    let Some(old) = old else {
        if !new_errs.is_empty() {
            return Err(invalid());
        }
        return Ok(if exempt_ns {
            exempt_namespace_warning(cfg, name, &new_policy, labels)
                .into_iter()
                .collect()
        } else {
            Vec::new()
        });
    };
    let (old_policy, old_errs) = policy_for(&old["metadata"]["labels"], &cfg.defaults);
    if !new_errs.is_empty() && (old_errs.is_empty() || new_errs != old_errs) {
        return Err(invalid());
    }
    let unchanged = new_policy.enforce == old_policy.enforce;
    let relaxed = new_policy.enforce.version == old_policy.enforce.version
        && new_policy.enforce.level <= old_policy.enforce.level;
    if unchanged || new_policy.enforce.level == Level::Privileged || relaxed {
        return Ok(Vec::new());
    }
    if exempt_ns {
        return Ok(exempt_namespace_warning(cfg, name, &new_policy, labels)
            .into_iter()
            .collect());
    }
    pods_against(ctx, cfg, name, new_policy.enforce).await
}

fn label_errors(rt: &ResourceType, name: &str, errs: &[LabelError]) -> ApiError {
    let causes: Vec<(String, String, String)> = errs
        .iter()
        .map(|e| {
            (
                format!("metadata.labels[{}]", e.label),
                "Invalid value".to_string(),
                format!("{}: {}", crate::schema::go_quote(&e.value), e.message),
            )
        })
        .collect();
    ApiError::invalid(&rt.kind, name, rt, &causes)
}

/// The warning for PodSecurity labels on an exempt namespace, naming the
/// modes its labels set (none when they select nothing beyond the
/// defaults).
fn exempt_namespace_warning(
    cfg: &PodSecurityConfig,
    ns: &str,
    policy: &Policy,
    labels: &Value,
) -> Option<String> {
    if policy.fully_privileged() || policy.equivalent(&cfg.defaults) {
        return None;
    }
    let has = |k: &str| labels.get(k).is_some();
    let modes = [
        (
            "enforce",
            policy.enforce,
            ENFORCE_LABEL,
            ENFORCE_VERSION_LABEL,
        ),
        ("audit", policy.audit, AUDIT_LABEL, AUDIT_VERSION_LABEL),
        ("warn", policy.warn, WARN_LABEL, WARN_VERSION_LABEL),
    ];
    let parts: Vec<String> = modes
        .iter()
        .filter(|(_, lv, l, v)| lv.level != Level::Privileged && (has(l) || has(v)))
        .map(|(mode, lv, _, _)| format!("{mode}={lv}"))
        .collect();
    Some(format!(
        "namespace {} is exempt from Pod Security, and the policy ({}) will be ignored",
        crate::schema::go_quote(ns),
        parts.join(", ")
    ))
}

/// How many existing pods a tightened `enforce` label is tried on, and
/// for how long (upstream's limits).
const NAMESPACE_MAX_PODS: usize = 3000;
const NAMESPACE_POD_CHECK_TIME: Duration = Duration::from_secs(1);

/// Tries `enforce` on the pods in `ns`: warnings naming the pods that
/// would be refused, one line per distinct set of reasons.
async fn pods_against(
    ctx: &Ctx<'_>,
    cfg: &PodSecurityConfig,
    ns: &str,
    enforce: LevelVersion,
) -> ApiResult<Vec<String>> {
    let deadline = Instant::now() + NAMESPACE_POD_CHECK_TIME;
    let Ok(pods) = namespace_pods(ctx, ns).await else {
        return Ok(vec![
            "failed to list pods while checking new PodSecurity enforce level".into(),
        ]);
    };
    let pods = prioritize(cfg, pods);
    let total = pods.len();
    let mut checked = 0;
    // reasons -> (lexically first pod, count), in first-seen order.
    let mut found: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for pod in pods.iter().take(NAMESPACE_MAX_PODS) {
        checked += 1;
        let f = policy::evaluate(enforce, &pod["metadata"], &pod["spec"]);
        if !f.allowed() {
            let name = name_of(pod).to_string();
            let e = found
                .entry(f.reasons())
                .or_insert_with(|| (name.clone(), 0));
            if name < e.0 {
                e.0 = name;
            }
            e.1 += 1;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let mut warnings = Vec::new();
    if checked < total {
        warnings.push(format!(
            "new PodSecurity enforce level only checked against the first {checked} of {total} existing pods"
        ));
    }
    if !found.is_empty() {
        warnings.push(format!(
            "existing pods in namespace {} violate the new PodSecurity enforce level {}",
            crate::schema::go_quote(ns),
            quote(&enforce)
        ));
    }
    let mut per_pod: Vec<String> = found
        .into_iter()
        .map(|(reasons, (pod, n))| match n {
            1 => format!("{pod}: {reasons}"),
            2 => format!("{pod} (and 1 other pod): {reasons}"),
            n => format!("{pod} (and {} other pods): {reasons}", n - 1),
        })
        .collect();
    per_pod.sort();
    warnings.extend(per_pod);
    Ok(warnings)
}

async fn namespace_pods(ctx: &Ctx<'_>, ns: &str) -> ApiResult<Vec<Value>> {
    let pods = registry::find("", "v1", "pods").expect("pods registered");
    let prefix = pods.prefix(Some(ns));
    if let Some(snap) = ctx
        .state
        .caches
        .running(pods)
        .and_then(|c| c.snapshot(&prefix))
    {
        return Ok(snap.objects.iter().map(|o| Value::clone(o)).collect());
    }
    let page = ctx.state.store.list(&prefix, None, 0, 0).await?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Pods of exempt runtime classes dropped; then one pod per controller
/// first, the other pods of a controller after all of those (they most
/// likely fail alike).
fn prioritize(cfg: &PodSecurityConfig, pods: Vec<Value>) -> Vec<Value> {
    let mut first = Vec::new();
    let mut duplicates = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for pod in pods {
        if let Some(rc) = pod["spec"]["runtimeClassName"]
            .as_str()
            .filter(|s| !s.is_empty())
            && cfg.exemptions.runtime_classes.iter().any(|r| r == rc)
        {
            continue;
        }
        let controller = pod["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["controller"].as_bool() == Some(true))
            .and_then(|o| o["uid"].as_str().map(str::to_string));
        if controller.is_some_and(|uid| !seen.insert(uid)) {
            duplicates.push(pod);
        } else {
            first.push(pod);
        }
    }
    first.extend(duplicates);
    first
}

#[cfg(test)]
mod tests;
