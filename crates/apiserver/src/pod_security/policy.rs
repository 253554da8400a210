//! The Pod Security Standards as checks of a pod's metadata and spec:
//! levels, versions, and the checks of `baseline` and `restricted`, with
//! the version ranges and the wording of upstream's
//! `k8s.io/pod-security-admission/policy` (release 1.35).
//!
//! A check has one or more revisions, each applying from a minimum policy
//! version on; a `restricted` revision may replace (override) a
//! `baseline` check. The checks of one level and version run in
//! upstream's order: the baseline checks by id, then the restricted ones
//! by id, so the aggregated message lists reasons as kube-apiserver does.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// No restrictions.
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

impl Level {
    /// The level's name as labels and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }

    /// Parses a level name; the error is upstream's wording.
    pub fn parse(s: &str) -> Result<Level, String> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err("must be one of privileged, baseline, restricted".into()),
        }
    }
}

/// A policy version: `latest` or `v1.<minor>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The newest policy this server knows.
    Latest,
    /// `v1.<minor>` as given (it may be newer than the server; it is then
    /// evaluated as [`Version::Latest`] but still printed as given).
    V1(u64),
}

impl Version {
    /// Parses `latest` or `v1.<minor>` (no leading zeros), with upstream's
    /// error text.
    pub fn parse(s: &str) -> Result<Version, String> {
        const ERR: &str = r#"must be "latest" or "v1.x""#;
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let minor = s.strip_prefix("v1.").ok_or(ERR)?;
        let digits_only = !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit());
        if !digits_only || (minor.len() > 1 && minor.starts_with('0')) {
            return Err(ERR.into());
        }
        minor
            .parse::<u64>()
            .map(Version::V1)
            .map_err(|_| ERR.into())
    }

    /// The minor version the checks are run at: `latest` and anything
    /// newer than this server are the server's own version.
    pub fn effective_minor(self) -> u64 {
        let latest = latest_minor();
        match self {
            Version::Latest => latest,
            Version::V1(m) => m.min(latest),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::V1(m) => write!(f, "v1.{m}"),
        }
    }
}

/// The minor version `latest` stands for: the server's claimed version,
/// never beyond the newest revision of the checks here (upstream caps an
/// evaluation at the newest check version it has as well).
pub fn latest_minor() -> u64 {
    let claimed = crate::discovery::KUBE_VERSION
        .1
        .parse()
        .unwrap_or(NEWEST_CHECK);
    claimed.min(NEWEST_CHECK)
}

/// The newest minimum version of any check revision below.
const NEWEST_CHECK: u64 = 35;

/// A level at a version, e.g. `restricted:latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    /// The level.
    pub level: Level,
    /// The version.
    pub version: Version,
}

impl LevelVersion {
    /// `privileged:latest`, what an unlabelled namespace gets by default.
    pub const PRIVILEGED: LevelVersion = LevelVersion {
        level: Level::Privileged,
        version: Version::Latest,
    };

    /// Whether the two evaluate the same: both privileged, or equal.
    pub fn equivalent(&self, other: &LevelVersion) -> bool {
        (self.level == Level::Privileged && other.level == Level::Privileged) || self == other
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level.as_str(), self.version)
    }
}

/// One failed check: the short reason and the optional detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// E.g. `hostPath volumes`.
    pub reason: &'static str,
    /// E.g. `volume "h"`; empty when the check gives none.
    pub detail: String,
}

/// The violations of one evaluation, in check order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings(pub Vec<Violation>);

impl Findings {
    /// No check failed.
    pub fn allowed(&self) -> bool {
        self.0.is_empty()
    }

    /// `reason (detail), reason, ...` as in a refusal or warning.
    pub fn detail(&self) -> String {
        self.0
            .iter()
            .map(|v| {
                if v.detail.is_empty() {
                    v.reason.to_string()
                } else {
                    format!("{} ({})", v.reason, v.detail)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The reasons only, as in the warnings about existing pods.
    pub fn reasons(&self) -> String {
        self.0
            .iter()
            .map(|v| v.reason)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs the checks of `lv` on a pod's (or pod template's) metadata and spec.
pub fn evaluate(lv: LevelVersion, meta: &Value, spec: &Value) -> Findings {
    if lv.level == Level::Privileged {
        return Findings::default();
    }
    let minor = lv.version.effective_minor();
    let active = |c: &Check| {
        c.revisions
            .iter()
            .rev()
            .find(|r| r.since <= minor)
            .map(|r| (c.id, r))
    };
    let restricted: Vec<_> = if lv.level == Level::Restricted {
        CHECKS
            .iter()
            .filter(|c| c.level == Level::Restricted)
            .filter_map(active)
            .collect()
    } else {
        Vec::new()
    };
    let overridden: BTreeSet<&str> = restricted
        .iter()
        .flat_map(|(_, r)| r.overrides.iter().copied())
        .collect();
    let baseline = CHECKS
        .iter()
        .filter(|c| c.level == Level::Baseline && !overridden.contains(c.id))
        .filter_map(active);
    let pod = Pod { meta, spec };
    Findings(
        baseline
            .chain(restricted)
            .filter_map(|(_, r)| (r.check)(&pod))
            .collect(),
    )
}

/// What a check reads.
struct Pod<'a> {
    meta: &'a Value,
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    /// Init containers, containers, then ephemeral containers, as upstream
    /// visits them.
    fn containers(&self) -> impl Iterator<Item = &'a Value> {
        let spec = self.spec;
        ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .flat_map(move |k| spec[k].as_array().into_iter().flatten())
    }

    fn pod_sc(&self) -> &'a Value {
        &self.spec["securityContext"]
    }

    fn windows(&self) -> bool {
        self.spec["os"]["name"].as_str() == Some("windows")
    }

    /// `hostUsers: false`: the pod runs in a user namespace.
    fn user_namespace(&self) -> bool {
        self.spec["hostUsers"].as_bool() == Some(false)
    }

    fn annotations(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.meta["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
    }
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or("").to_string()
}

fn sc(c: &Value) -> &Value {
    &c["securityContext"]
}

fn present(v: &Value) -> bool {
    !v.is_null()
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let inner: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", inner.join("\", \""))
}

fn plural<'s>(singular: &'s str, plural: &'s str, n: usize) -> &'s str {
    if n == 1 { singular } else { plural }
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        join_quote(names)
    )
}

/// A Go `%q` of a string (labels and annotations in details).
fn go_q(s: &str) -> String {
    crate::schema::go_quote(s)
}

fn violation(reason: &'static str, detail: String) -> Option<Violation> {
    Some(Violation { reason, detail })
}

type CheckFn = fn(&Pod) -> Option<Violation>;

struct Revision {
    /// The first policy minor version (of v1) this revision applies to.
    since: u64,
    check: CheckFn,
    /// Baseline checks this restricted revision replaces.
    overrides: &'static [&'static str],
}

struct Check {
    id: &'static str,
    level: Level,
    revisions: &'static [Revision],
}

const fn rev(since: u64, check: CheckFn) -> Revision {
    Revision {
        since,
        check,
        overrides: &[],
    }
}

const fn rev_over(since: u64, check: CheckFn, overrides: &'static [&'static str]) -> Revision {
    Revision {
        since,
        check,
        overrides,
    }
}

/// Every check, baseline ones first, each group in byte order of its id
/// (the order upstream runs and reports them; a test keeps it sorted).
const CHECKS: &[Check] = &[
    Check {
        id: "appArmorProfile",
        level: Level::Baseline,
        revisions: &[rev(0, app_armor_profile)],
    },
    Check {
        id: "capabilities_baseline",
        level: Level::Baseline,
        revisions: &[rev(0, capabilities_baseline)],
    },
    Check {
        id: "hostNamespaces",
        level: Level::Baseline,
        revisions: &[rev(0, host_namespaces)],
    },
    Check {
        id: "hostPathVolumes",
        level: Level::Baseline,
        revisions: &[rev(0, host_path_volumes)],
    },
    Check {
        id: "hostPorts",
        level: Level::Baseline,
        revisions: &[rev(0, host_ports)],
    },
    Check {
        id: "hostProbesAndHostLifecycle",
        level: Level::Baseline,
        revisions: &[rev(34, host_probes_and_lifecycle)],
    },
    Check {
        id: "privileged",
        level: Level::Baseline,
        revisions: &[rev(0, privileged)],
    },
    Check {
        id: "procMount",
        level: Level::Baseline,
        revisions: &[rev(0, proc_mount), rev(35, proc_mount_unless_userns)],
    },
    Check {
        id: "seLinuxOptions",
        level: Level::Baseline,
        revisions: &[rev(0, selinux_options_1_0), rev(31, selinux_options_1_31)],
    },
    Check {
        id: "seccompProfile_baseline",
        level: Level::Baseline,
        revisions: &[
            rev(0, seccomp_baseline_annotations),
            rev(19, seccomp_baseline),
        ],
    },
    Check {
        id: "sysctls",
        level: Level::Baseline,
        revisions: &[
            rev(0, sysctls_1_0),
            rev(27, sysctls_1_27),
            rev(29, sysctls_1_29),
            rev(32, sysctls_1_32),
        ],
    },
    Check {
        id: "windowsHostProcess",
        level: Level::Baseline,
        revisions: &[rev(0, windows_host_process)],
    },
    Check {
        id: "allowPrivilegeEscalation",
        level: Level::Restricted,
        revisions: &[
            rev(8, allow_privilege_escalation),
            rev(25, allow_privilege_escalation_unless_windows),
        ],
    },
    Check {
        id: "capabilities_restricted",
        level: Level::Restricted,
        revisions: &[
            rev_over(22, capabilities_restricted, &["capabilities_baseline"]),
            rev_over(
                25,
                capabilities_restricted_unless_windows,
                &["capabilities_baseline"],
            ),
        ],
    },
    Check {
        id: "procMount_restricted",
        level: Level::Restricted,
        revisions: &[rev_over(35, proc_mount, &["procMount"])],
    },
    Check {
        id: "restrictedVolumes",
        level: Level::Restricted,
        revisions: &[rev_over(0, restricted_volumes, &["hostPathVolumes"])],
    },
    Check {
        id: "runAsNonRoot",
        level: Level::Restricted,
        revisions: &[
            rev(0, run_as_non_root),
            rev(35, run_as_non_root_unless_userns),
        ],
    },
    Check {
        id: "runAsUser",
        level: Level::Restricted,
        revisions: &[rev(23, run_as_user), rev(35, run_as_user_unless_userns)],
    },
    Check {
        id: "seccompProfile_restricted",
        level: Level::Restricted,
        revisions: &[
            rev_over(19, seccomp_restricted, &["seccompProfile_baseline"]),
            rev_over(
                25,
                seccomp_restricted_unless_windows,
                &["seccompProfile_baseline"],
            ),
        ],
    },
];

// ---- baseline ----

fn allowed_apparmor_type(t: &Value) -> bool {
    matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"))
}

fn app_armor_profile(p: &Pod) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    let pod_profile = &p.pod_sc()["appArmorProfile"];
    if present(pod_profile) && !allowed_apparmor_type(&pod_profile["type"]) {
        setters.push("pod".to_string());
        bad_values.insert(pod_profile["type"].as_str().unwrap_or("").to_string());
    }
    let mut bad = Vec::new();
    for c in p.containers() {
        let profile = &sc(c)["appArmorProfile"];
        if present(profile) && !allowed_apparmor_type(&profile["type"]) {
            bad.push(name(c));
            bad_values.insert(profile["type"].as_str().unwrap_or("").to_string());
        }
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    let mut values: Vec<String> = bad_values.into_iter().collect();
    let mut annotations: Vec<String> = p
        .annotations()
        .filter(|(k, v)| {
            k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={}", go_q(v)))
        .collect();
    if !annotations.is_empty() {
        annotations.sort();
        setters.push(plural("annotation", "annotations", annotations.len()).to_string());
        values.extend(annotations);
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        plural(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or(""))
}

fn capabilities_baseline(p: &Pod) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut caps = BTreeSet::new();
    for c in p.containers() {
        let capabilities = &sc(c)["capabilities"];
        if !present(capabilities) {
            continue;
        }
        let mut valid = true;
        for cap in strings(&capabilities["add"]) {
            if !BASELINE_CAPABILITIES.contains(&cap) {
                valid = false;
                caps.insert(cap.to_string());
            }
        }
        if !valid {
            bad.push(name(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let caps: Vec<String> = caps.into_iter().collect();
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad),
            join_quote(&caps)
        ),
    )
}

fn host_namespaces(p: &Pod) -> Option<Violation> {
    let found: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| p.spec[*k].as_bool() == Some(true))
        .map(|k| format!("{k}=true"))
        .collect();
    if found.is_empty() {
        return None;
    }
    violation("host namespaces", found.join(", "))
}

fn volumes<'a>(p: &Pod<'a>) -> impl Iterator<Item = &'a Value> {
    p.spec["volumes"].as_array().into_iter().flatten()
}

fn host_path_volumes(p: &Pod) -> Option<Violation> {
    let names: Vec<String> = volumes(p)
        .filter(|v| present(&v["hostPath"]))
        .map(name)
        .collect();
    if names.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            plural("volume", "volumes", names.len()),
            join_quote(&names)
        ),
    )
}

fn host_ports(p: &Pod) -> Option<Violation> {
    let mut bad = Vec::new();
    // Upstream keeps the ports as a set of strings: sorted as text.
    let mut ports = BTreeSet::new();
    for c in p.containers() {
        let mut valid = true;
        for port in c["ports"].as_array().into_iter().flatten() {
            let hp = port["hostPort"].as_i64().unwrap_or(0);
            if hp != 0 {
                valid = false;
                ports.insert(hp.to_string());
            }
        }
        if !valid {
            bad.push(name(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            plural("uses", "use", bad.len()),
            plural("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

fn host_probes_and_lifecycle(p: &Pod) -> Option<Violation> {
    let mut bad = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in p.containers() {
        let handlers = [
            &c["livenessProbe"],
            &c["readinessProbe"],
            &c["startupProbe"],
            &c["lifecycle"]["postStart"],
            &c["lifecycle"]["preStop"],
        ];
        for h in handlers {
            for kind in ["httpGet", "tcpSocket"] {
                if let Some(host) = h[kind]["host"].as_str().filter(|s| !s.is_empty()) {
                    bad.insert(name(c));
                    hosts.insert(host.to_string());
                }
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    let bad: Vec<String> = bad.into_iter().collect();
    let hosts: Vec<String> = hosts.into_iter().collect();
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            plural("uses", "use", bad.len()),
            plural(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&hosts)
        ),
    )
}

fn privileged(p: &Pod) -> Option<Violation> {
    let bad: Vec<String> = p
        .containers()
        .filter(|c| sc(c)["privileged"].as_bool() == Some(true))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

fn proc_mount(p: &Pod) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for c in p.containers() {
        let pm = &sc(c)["procMount"];
        if present(pm) && pm.as_str() != Some("Default") {
            bad.push(name(c));
            types.insert(pm.as_str().unwrap_or("").to_string());
        }
    }
    if bad.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&types)
        ),
    )
}

fn proc_mount_unless_userns(p: &Pod) -> Option<Violation> {
    if p.user_namespace() {
        return None;
    }
    proc_mount(p)
}

const SELINUX_TYPES_1_0: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t"];
const SELINUX_TYPES_1_31: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

fn selinux_options_1_0(p: &Pod) -> Option<Violation> {
    selinux_options(p, SELINUX_TYPES_1_0)
}

fn selinux_options_1_31(p: &Pod) -> Option<Violation> {
    selinux_options(p, SELINUX_TYPES_1_31)
}

fn selinux_options(p: &Pod, allowed: &[&str]) -> Option<Violation> {
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |opts: &Value| {
        let mut ok = true;
        let ty = opts["type"].as_str().unwrap_or("");
        if !allowed.contains(&ty) {
            ok = false;
            bad_types.insert(ty.to_string());
        }
        if !opts["user"].as_str().unwrap_or("").is_empty() {
            ok = false;
            set_user = true;
        }
        if !opts["role"].as_str().unwrap_or("").is_empty() {
            ok = false;
            set_role = true;
        }
        ok
    };
    let mut setters = Vec::new();
    let pod_opts = &p.pod_sc()["seLinuxOptions"];
    if present(pod_opts) && !valid(pod_opts) {
        setters.push("pod".to_string());
    }
    let mut bad = Vec::new();
    for c in p.containers() {
        let opts = &sc(c)["seLinuxOptions"];
        if present(opts) && !valid(opts) {
            bad.push(name(c));
        }
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        data.push(format!(
            "{} {}",
            plural("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if set_user {
        data.push("user may not be set".to_string());
    }
    if set_role {
        data.push("role may not be set".to_string());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

fn valid_seccomp_type(t: &Value) -> bool {
    matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"))
}

/// Policy versions before 1.19 read seccomp from the old annotations.
fn seccomp_baseline_annotations(p: &Pod) -> Option<Violation> {
    const POD_KEY: &str = "seccomp.security.alpha.kubernetes.io/pod";
    const CONTAINER_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let annotations = &p.meta["annotations"];
    let mut forbidden = BTreeSet::new();
    let mut consider = |key: String| {
        if let Some(v) = annotations.get(&key) {
            let v = v.as_str().unwrap_or("");
            if !valid(v) {
                forbidden.insert(format!("{key}={}", go_q(v)));
            }
        }
    };
    consider(POD_KEY.to_string());
    for c in p.containers() {
        consider(format!("{CONTAINER_PREFIX}{}", name(c)));
    }
    if forbidden.is_empty() {
        return None;
    }
    let forbidden: Vec<String> = forbidden.into_iter().collect();
    violation(
        "seccompProfile",
        format!(
            "forbidden {} {}",
            plural("annotation", "annotations", forbidden.len()),
            forbidden.join(", ")
        ),
    )
}

fn seccomp_baseline(p: &Pod) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    let pod_profile = &p.pod_sc()["seccompProfile"];
    if present(pod_profile) && !valid_seccomp_type(&pod_profile["type"]) {
        setters.push("pod".to_string());
        values.insert(pod_profile["type"].as_str().unwrap_or("").to_string());
    }
    let mut bad = Vec::new();
    for c in p.containers() {
        let profile = &sc(c)["seccompProfile"];
        if present(profile) && !valid_seccomp_type(&profile["type"]) {
            bad.push(name(c));
            values.insert(profile["type"].as_str().unwrap_or("").to_string());
        }
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    let values: Vec<String> = values.into_iter().collect();
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

const SYSCTLS_1_0: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
];
const SYSCTLS_ADDED_1_27: &[&str] = &["net.ipv4.ip_local_reserved_ports"];
const SYSCTLS_ADDED_1_29: &[&str] = &[
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SYSCTLS_ADDED_1_32: &[&str] = &["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"];

fn sysctls_1_0(p: &Pod) -> Option<Violation> {
    sysctls(p, &[SYSCTLS_1_0])
}

fn sysctls_1_27(p: &Pod) -> Option<Violation> {
    sysctls(p, &[SYSCTLS_1_0, SYSCTLS_ADDED_1_27])
}

fn sysctls_1_29(p: &Pod) -> Option<Violation> {
    sysctls(p, &[SYSCTLS_1_0, SYSCTLS_ADDED_1_27, SYSCTLS_ADDED_1_29])
}

fn sysctls_1_32(p: &Pod) -> Option<Violation> {
    sysctls(
        p,
        &[
            SYSCTLS_1_0,
            SYSCTLS_ADDED_1_27,
            SYSCTLS_ADDED_1_29,
            SYSCTLS_ADDED_1_32,
        ],
    )
}

fn sysctls(p: &Pod, allowed: &[&[&str]]) -> Option<Violation> {
    let forbidden: Vec<&str> = p.pod_sc()["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .filter(|n| !allowed.iter().any(|set| set.contains(n)))
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    violation("forbidden sysctls", forbidden.join(", "))
}

fn windows_host_process(p: &Pod) -> Option<Violation> {
    let host_process = |sc: &Value| sc["windowsOptions"]["hostProcess"].as_bool() == Some(true);
    let mut setters = Vec::new();
    if host_process(p.pod_sc()) {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = p
        .containers()
        .filter(|c| host_process(sc(c)))
        .map(name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

// ---- restricted ----

fn allow_privilege_escalation(p: &Pod) -> Option<Violation> {
    let bad: Vec<String> = p
        .containers()
        .filter(|c| sc(c)["allowPrivilegeEscalation"].as_bool() != Some(false))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

fn allow_privilege_escalation_unless_windows(p: &Pod) -> Option<Violation> {
    if p.windows() {
        return None;
    }
    allow_privilege_escalation(p)
}

fn capabilities_restricted(p: &Pod) -> Option<Violation> {
    let mut missing_drop_all = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in p.containers() {
        let capabilities = &sc(c)["capabilities"];
        if !present(capabilities) {
            missing_drop_all.push(name(c));
            continue;
        }
        if !strings(&capabilities["drop"]).any(|d| d == "ALL") {
            missing_drop_all.push(name(c));
        }
        let mut adds_forbidden = false;
        for cap in strings(&capabilities["add"]) {
            if cap != "NET_BIND_SERVICE" {
                adds_forbidden = true;
                forbidden.insert(cap.to_string());
            }
        }
        if adds_forbidden {
            adding.push(name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            r#"{} must set securityContext.capabilities.drop=["ALL"]"#,
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding.is_empty() {
        let forbidden: Vec<String> = forbidden.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&forbidden)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

fn capabilities_restricted_unless_windows(p: &Pod) -> Option<Violation> {
    if p.windows() {
        return None;
    }
    capabilities_restricted(p)
}

/// The inline volume sources `restricted` allows.
const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The sources `restricted` refuses, in the order upstream names the first
/// one a volume has.
const RESTRICTED_VOLUME_REFUSED: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

fn restricted_volumes(p: &Pod) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for v in volumes(p) {
        if RESTRICTED_VOLUME_SOURCES.iter().any(|s| present(&v[*s])) {
            continue;
        }
        bad.push(name(v));
        let ty = RESTRICTED_VOLUME_REFUSED
            .iter()
            .find(|s| present(&v[**s]))
            .copied()
            .unwrap_or("unknown");
        types.insert(ty);
    }
    if bad.is_empty() {
        return None;
    }
    let types: Vec<&str> = types.into_iter().collect();
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            plural("volume", "volumes", bad.len()),
            join_quote(&bad),
            plural("uses", "use", bad.len()),
            plural(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            join_quote(&types)
        ),
    )
}

fn run_as_non_root(p: &Pod) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut pod_non_root = false;
    match p.pod_sc()["runAsNonRoot"].as_bool() {
        Some(false) => setters.push("pod".to_string()),
        Some(true) => pod_non_root = true,
        None => {}
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in p.containers() {
        match sc(c)["runAsNonRoot"].as_bool() {
            Some(false) => explicit.push(name(c)),
            Some(true) => {}
            None if !pod_non_root => implicit.push(name(c)),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

fn run_as_non_root_unless_userns(p: &Pod) -> Option<Violation> {
    if p.user_namespace() {
        return None;
    }
    run_as_non_root(p)
}

fn run_as_user(p: &Pod) -> Option<Violation> {
    let mut setters = Vec::new();
    if p.pod_sc()["runAsUser"].as_i64() == Some(0) {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = p
        .containers()
        .filter(|c| sc(c)["runAsUser"].as_i64() == Some(0))
        .map(name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters.join(" and ")),
    )
}

fn run_as_user_unless_userns(p: &Pod) -> Option<Violation> {
    if p.user_namespace() {
        return None;
    }
    run_as_user(p)
}

fn seccomp_restricted(p: &Pod) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    let mut pod_set = false;
    let pod_profile = &p.pod_sc()["seccompProfile"];
    if present(pod_profile) {
        if valid_seccomp_type(&pod_profile["type"]) {
            pod_set = true;
        } else {
            setters.push("pod".to_string());
            values.insert(pod_profile["type"].as_str().unwrap_or("").to_string());
        }
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in p.containers() {
        let profile = &sc(c)["seccompProfile"];
        if present(profile) {
            if !valid_seccomp_type(&profile["type"]) {
                explicit.push(name(c));
                values.insert(profile["type"].as_str().unwrap_or("").to_string());
            }
        } else if !pod_set {
            implicit.push(name(c));
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        let values: Vec<String> = values.into_iter().collect();
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&values)
            ),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                r#"pod or {} must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#,
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

fn seccomp_restricted_unless_windows(p: &Pod) -> Option<Violation> {
    if p.windows() {
        return None;
    }
    seccomp_restricted(p)
}

#[cfg(test)]
mod tests;
