//! CertificateSigningRequests (`certificates.k8s.io/v1`), as
//! kube-apiserver's registry strategy, validation and certificate
//! admission plugins treat them: the requester's identity is written into
//! the spec at create; the spec never changes afterwards; conditions
//! change through `approval` (which needs `approve` on the signer), the
//! certificate through `status` (which needs `sign`); a request for the
//! client signer may not ask for `system:masters`.
//!
//! Signing itself is kube-controller-manager's job here too: the
//! csrsigning loop in `rke2-controllers`.

use base64::Engine;
use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::status::ApiError;
use crate::{ApiState, Identity};

/// The API group.
pub const GROUP: &str = "certificates.k8s.io";

/// The signer of user client certificates (client CA).
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// The signer of kubelet client certificates (client CA).
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet serving certificates (server CA).
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// The v1beta1 default signer, refused by the v1 API.
pub const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// One field error: (field, type, detail), as `ApiError::invalid` takes.
type Cause = (String, String, String);

/// Every key usage the API knows, sorted (upstream's `allValidUsages`).
const VALID_USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

/// Condition types whose status may only be `True`.
const TRUE_ONLY: &[&str] = &["Approved", "Denied", "Failed"];

fn quoted(s: &str) -> String {
    crate::schema::go_quote(s)
}

/// A byte slice as Go's `%#v` prints it (`[]byte{0x6e, 0x6f}`), which is
/// how a `field.Invalid` on a `[]byte` field shows its value.
pub fn go_bytes(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "[]byte(nil)".to_string(),
        Some(b) => {
            let items: Vec<String> = b.iter().map(|x| format!("{x:#x}")).collect();
            format!("[]byte{{{}}}", items.join(", "))
        }
    }
}

fn not_supported(value: &str, supported: &[&str]) -> String {
    let list: Vec<String> = supported.iter().map(|s| quoted(s)).collect();
    format!("{}: supported values: {}", quoted(value), list.join(", "))
}

/// The bytes of a base64 field (`spec.request`, `status.certificate`);
/// `None` when absent. The typed schema check refused bad base64 already.
fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    v.as_str().map(|s| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .unwrap_or_default()
    })
}

/// The parsed request of a CSR object, when it parses and verifies.
pub fn request_of(obj: &Value) -> Result<rke2_trust::CertificateRequest, rke2_trust::CsrError> {
    let bytes = bytes_of(&obj["spec"]["request"]).unwrap_or_default();
    rke2_trust::CertificateRequest::from_pem(&bytes)
}

/// Upstream's `ValidateSignerName`.
fn signer_name_problems(signer: &str, causes: &mut Vec<Cause>) {
    use rke2_apimachinery::validation as v;
    let field = "spec.signerName".to_string();
    if signer.is_empty() {
        causes.push((field, "Required value".into(), String::new()));
        return;
    }
    let Some((domain, path)) = signer.split_once('/').filter(|(_, p)| !p.contains('/')) else {
        causes.push((
            field,
            "Invalid value".into(),
            format!(
                "{}: must be a fully qualified domain and path of the form 'example.com/signer-name'",
                quoted(signer)
            ),
        ));
        return;
    };
    if domain.len() > 253 {
        causes.push((
            field.clone(),
            "Too long".into(),
            "may not be more than 253 bytes".into(),
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    for label in &labels {
        let problems = v::validate_dns1123_label(label);
        if !problems.is_empty() {
            for p in problems {
                causes.push((
                    field.clone(),
                    "Invalid value".into(),
                    format!(
                        "{}: validating label {}: {p}",
                        quoted(domain),
                        quoted(label)
                    ),
                ));
            }
            break;
        }
    }
    if labels.len() < 2 {
        causes.push((
            field.clone(),
            "Invalid value".into(),
            format!(
                "{}: should be a domain with at least two segments separated by dots",
                quoted(domain)
            ),
        ));
    }
    for label in path.split('.') {
        let problems = v::validate_dns1123_subdomain(label);
        if !problems.is_empty() {
            for p in problems {
                causes.push((
                    field.clone(),
                    "Invalid value".into(),
                    format!("{}: validating label {}: {p}", quoted(path), quoted(label)),
                ));
            }
            break;
        }
    }
    // A domain, a '/', and a path that fits a label and a subdomain.
    const MAX: usize = 253 + (253 + 63 + 1) + 1;
    if signer.len() > MAX {
        causes.push((
            field,
            "Too long".into(),
            format!("may not be more than {MAX} bytes"),
        ));
    }
}

/// Upstream's `validateCertificate`: empty, or only `CERTIFICATE` blocks
/// (at least one) that parse.
fn certificate_problem(pem: &[u8]) -> Option<String> {
    if pem.is_empty() {
        return None;
    }
    let blocks = rke2_trust::pem_blocks(pem);
    for (label, der) in &blocks {
        if label != "CERTIFICATE" {
            return Some(format!(
                "only CERTIFICATE PEM blocks are allowed, found {}",
                quoted(label)
            ));
        }
        if !rke2_trust::is_certificate_der(der) {
            return Some("x509: malformed certificate".into());
        }
    }
    blocks
        .is_empty()
        .then(|| "must contain at least one CERTIFICATE PEM block".into())
}

/// Upstream's `validateCertificateSigningRequest` with the options of a
/// create (what a stored CSR always satisfies): the request parses and
/// verifies, usages are given, known and unique, the signer name is a
/// qualified name (not the legacy one), `expirationSeconds` ≥ 600,
/// conditions are well formed, and the certificate is PEM certificates.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let request = bytes_of(&spec["request"]);
    if let Err(e) = rke2_trust::CertificateRequest::from_pem(request.as_deref().unwrap_or(&[])) {
        causes.push((
            "spec.request".into(),
            "Invalid value".into(),
            format!("{}: {e}", go_bytes(request.as_deref())),
        ));
    }
    let usages: Vec<&str> = spec["usages"]
        .as_array()
        .map(|a| a.iter().map(|u| u.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    if usages.is_empty() {
        causes.push(("spec.usages".into(), "Required value".into(), String::new()));
    }
    for (i, u) in usages.iter().enumerate() {
        if !VALID_USAGES.contains(u) {
            causes.push((
                format!("spec.usages[{i}]"),
                "Unsupported value".into(),
                not_supported(u, VALID_USAGES),
            ));
        }
    }
    for (i, u) in usages.iter().enumerate() {
        if usages[..i].contains(u) {
            causes.push((
                format!("spec.usages[{i}]"),
                "Duplicate value".into(),
                quoted(u),
            ));
        }
    }
    let signer = spec["signerName"].as_str().unwrap_or("");
    if signer == LEGACY_UNKNOWN {
        causes.push((
            "spec.signerName".into(),
            "Invalid value".into(),
            format!(
                "{}: the legacy signerName is not allowed via this API version",
                quoted(signer)
            ),
        ));
    } else {
        signer_name_problems(signer, causes);
    }
    if let Some(secs) = spec["expirationSeconds"].as_i64()
        && secs < 600
    {
        causes.push((
            "spec.expirationSeconds".into(),
            "Invalid value".into(),
            format!("{secs}: may not specify a duration less than 600 seconds (10 minutes)"),
        ));
    }
    validate_conditions(obj, causes);
    if let Some(problem) =
        certificate_problem(&bytes_of(&obj["status"]["certificate"]).unwrap_or_default())
    {
        causes.push((
            "status.certificate".into(),
            "Invalid value".into(),
            format!("\"<certificate data>\": {problem}"),
        ));
    }
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn validate_conditions(obj: &Value, causes: &mut Vec<Cause>) {
    let (mut approved, mut denied) = (false, false);
    let mut seen: Vec<&str> = Vec::new();
    let list = conditions(obj);
    for (i, c) in list.iter().enumerate() {
        let at = format!("status.conditions[{i}]");
        let ty = c["type"].as_str().unwrap_or("");
        if ty.is_empty() {
            causes.push((format!("{at}.type"), "Required value".into(), String::new()));
        }
        let allowed: &[&str] = if TRUE_ONLY.contains(&ty) {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        match c["status"].as_str().unwrap_or("") {
            "" => causes.push((
                format!("{at}.status"),
                "Required value".into(),
                String::new(),
            )),
            s if !allowed.contains(&s) => causes.push((
                format!("{at}.status"),
                "Unsupported value".into(),
                not_supported(s, allowed),
            )),
            _ => {}
        }
        let exclusive = match ty {
            "Approved" => {
                approved = true;
                denied
            }
            "Denied" => {
                denied = true;
                approved
            }
            _ => false,
        };
        if exclusive {
            causes.push((
                format!("{at}.type"),
                "Invalid value".into(),
                format!(
                    "{}: Approved and Denied conditions are mutually exclusive",
                    quoted(ty)
                ),
            ));
        }
        if seen.contains(&ty) {
            causes.push((format!("{at}.type"), "Duplicate value".into(), quoted(ty)));
        }
        seen.push(ty);
    }
}

/// upstream's `PrepareForCreate`: the requester's user, groups (and uid
/// and extra, which this server's identities do not carry) replace
/// whatever the client sent; a new request has no status.
pub fn prepare_create(obj: &mut Value, id: &Identity) {
    if let Some(spec) = obj["spec"].as_object_mut() {
        for k in ["username", "uid", "groups", "extra"] {
            spec.remove(k);
        }
        spec.insert("username".into(), json!(id.user));
        if !id.groups.is_empty() {
            spec.insert("groups".into(), json!(id.groups));
        }
    }
    obj["status"] = json!({});
}

/// Which update path a write takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatePath {
    /// The object itself: only metadata may change.
    Main,
    /// `status`: the certificate, and conditions other than Approved and
    /// Denied.
    Status,
    /// `approval`: the conditions.
    Approval,
}

impl UpdatePath {
    /// The path of a subresource ("" for the object).
    pub fn of(subresource: Option<&str>) -> Self {
        match subresource {
            Some("status") => Self::Status,
            Some("approval") => Self::Approval,
            _ => Self::Main,
        }
    }
}

fn of_type<'a>(list: &'a [Value], ty: &str) -> Vec<&'a Value> {
    list.iter().filter(|c| c["type"] == ty).collect()
}

/// Sets `lastUpdateTime` and `lastTransitionTime` where a condition has
/// none (the transition time of an unchanged condition is the old one).
fn stamp_conditions(list: &mut [Value], old: &[Value], now: &str) {
    for c in list.iter_mut() {
        if !c.is_object() {
            continue;
        }
        if c["lastUpdateTime"].as_str().unwrap_or("").is_empty() {
            c["lastUpdateTime"] = json!(now);
        }
        if c["lastTransitionTime"].as_str().unwrap_or("").is_empty() {
            let carried = old
                .iter()
                .find(|o| {
                    o["type"] == c["type"]
                        && o["status"] == c["status"]
                        && !o["lastTransitionTime"].as_str().unwrap_or("").is_empty()
                })
                .map(|o| o["lastTransitionTime"].clone());
            c["lastTransitionTime"] = carried.unwrap_or_else(|| json!(now));
        }
    }
}

/// The registry strategies of an update (`PrepareForUpdate` of the object,
/// `status` and `approval`) followed by upstream's update validation for
/// that path; the broken rules are returned as 422 causes. `new` has been
/// through the generic `prepare_update` of its path already.
pub fn prepare_update(old: &Value, new: &mut Value, path: UpdatePath, now: &str) -> Vec<Cause> {
    new["spec"] = old["spec"].clone();
    let old_conditions = conditions(old);
    match path {
        UpdatePath::Main => new["status"] = old["status"].clone(),
        UpdatePath::Status => {
            // Approved and Denied instances stay as they were.
            let mut list = conditions(new);
            for ty in ["Approved", "Denied"] {
                let olds: Vec<usize> = (0..old_conditions.len())
                    .filter(|&i| old_conditions[i]["type"] == ty)
                    .collect();
                let news: Vec<usize> = (0..list.len()).filter(|&i| list[i]["type"] == ty).collect();
                if olds.len() == news.len() {
                    for (o, n) in olds.iter().zip(&news) {
                        list[*n] = old_conditions[*o].clone();
                    }
                }
            }
            stamp_conditions(&mut list, &old_conditions, now);
            set_conditions(new, list);
        }
        UpdatePath::Approval => {
            let mut list = conditions(new);
            stamp_conditions(&mut list, &old_conditions, now);
            new["status"] = old["status"].clone();
            set_conditions(new, list);
        }
    }
    let new_conditions = conditions(new);
    let mut causes = Vec::new();
    for ty in ["Approved", "Denied", "Failed"] {
        if of_type(&new_conditions, ty).len() < of_type(&old_conditions, ty).len() {
            causes.push((
                "status.conditions".into(),
                "Forbidden".into(),
                format!("updates may not remove a condition of type {}", quoted(ty)),
            ));
        }
    }
    if path != UpdatePath::Approval {
        for ty in ["Approved", "Denied"] {
            let (o, n) = (of_type(&old_conditions, ty), of_type(&new_conditions, ty));
            if n.len() > o.len() {
                causes.push((
                    "status.conditions".into(),
                    "Forbidden".into(),
                    format!("updates may not add a condition of type {}", quoted(ty)),
                ));
            } else if n.len() == o.len() && n != o {
                causes.push((
                    "status.conditions".into(),
                    "Forbidden".into(),
                    format!("updates may not modify a condition of type {}", quoted(ty)),
                ));
            }
        }
    }
    let (old_cert, new_cert) = (&old["status"]["certificate"], &new["status"]["certificate"]);
    let old_has = !old_cert.as_str().unwrap_or("").is_empty();
    if bytes_of(old_cert) != bytes_of(new_cert) {
        if path != UpdatePath::Status {
            causes.push((
                "status.certificate".into(),
                "Forbidden".into(),
                "updates may not set certificate content".into(),
            ));
        } else if old_has {
            causes.push((
                "status.certificate".into(),
                "Forbidden".into(),
                "updates may not modify existing certificate content".into(),
            ));
        }
    }
    causes
}

fn set_conditions(obj: &mut Value, list: Vec<Value>) {
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if list.is_empty() {
        if let Some(s) = obj["status"].as_object_mut() {
            s.remove("conditions");
        }
    } else {
        obj["status"]["conditions"] = Value::Array(list);
    }
}

/// A 403 as upstream's admission plugins word it (`admission.NewForbidden`).
fn forbidden(rt: &ResourceType, name: &str, why: String) -> ApiError {
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!("{} {} is forbidden: {why}", rt.qualified(), quoted(name)),
    );
    e.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
    e
}

/// CertificateSubjectRestriction: a request for the client signer may not
/// ask for the `system:masters` group (which would bypass authorization).
pub fn admit_create(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if obj["spec"]["signerName"] != KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    let name = crate::objects::name_of(obj);
    let req =
        request_of(obj).map_err(|e| forbidden(rt, name, format!("failed to parse CSR: {e}")))?;
    if req.organizations.iter().any(|o| o == "system:masters") {
        return Err(forbidden(
            rt,
            name,
            format!(
                "use of {KUBE_APISERVER_CLIENT} signer with system:masters group is not allowed"
            ),
        ));
    }
    Ok(())
}

/// Upstream's `IsAuthorizedForSignerName`: `verb` on the synthetic
/// `signers` resource named the signer, or its `<domain>/*`.
pub async fn authorized_for_signer(
    state: &ApiState,
    id: &Identity,
    verb: &str,
    signer: &str,
) -> bool {
    let ask = |name: String| async move {
        let req = crate::rbac::Request {
            verb,
            target: crate::rbac::Target::Resource {
                group: GROUP,
                resource: "signers",
                subresource: "",
                namespace: "",
                name: &name,
            },
        };
        crate::rbac::can(state, id, &req).await
    };
    if ask(signer.to_string()).await {
        return true;
    }
    let domain = signer.split('/').next().unwrap_or("");
    ask(format!("{domain}/*")).await
}

/// CertificateApproval and CertificateSigning: a write through `approval`
/// needs `approve` on the stored signer name; one through `status` that
/// changes the certificate needs `sign`.
pub async fn admit_update(
    state: &ApiState,
    id: &Identity,
    rt: &ResourceType,
    path: UpdatePath,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let signer = old["spec"]["signerName"].as_str().unwrap_or("");
    let name = crate::objects::name_of(old);
    let (verb, what) = match path {
        UpdatePath::Approval => ("approve", "approve"),
        UpdatePath::Status if old["status"]["certificate"] != new["status"]["certificate"] => {
            ("sign", "sign")
        }
        _ => return Ok(()),
    };
    if authorized_for_signer(state, id, verb, signer).await {
        return Ok(());
    }
    Err(forbidden(
        rt,
        name,
        format!(
            "user not permitted to {what} requests with signerName {}",
            quoted(signer)
        ),
    ))
}

/// The CONDITION column: Pending, Approved or Denied, then `,Failed` and
/// `,Issued` (upstream's printer, which reads condition types only).
pub fn condition_summary(obj: &Value) -> String {
    let list = conditions(obj);
    let has = |t: &str| list.iter().any(|c| c["type"] == t);
    let mut out = if has("Denied") {
        "Denied".to_string()
    } else if has("Approved") {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if has("Failed") {
        out.push_str(",Failed");
    }
    if !obj["status"]["certificate"]
        .as_str()
        .unwrap_or("")
        .is_empty()
    {
        out.push_str(",Issued");
    }
    out
}

#[cfg(test)]
mod tests;
