//! The signers of the `kubernetes.io` CertificateSigningRequests, as
//! kube-controller-manager's csrsigning controllers with RKE2's CA files:
//! `kube-apiserver-client` and `kube-apiserver-client-kubelet` sign with
//! the client CA (so the apiserver accepts the certificate and reads the
//! user from CN and the groups from O), `kubelet-serving` with the server
//! CA. Other signers are someone else's; they are left alone.
//!
//! A request is signed once it is approved, not failed and has no
//! certificate. One that breaks its signer's rules gets a `Failed`
//! condition (`SignerValidationFailure`, upstream's message) instead.
//! The lifetime is `spec.expirationSeconds` within [10 min, the cluster
//! signing duration]; the certificate goes in through `status` (an update,
//! as upstream's, which is what its bootstrap role allows).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use rke2_trust::{CertAuthority, CertificateRequest};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The user client certificate signer.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// The kubelet client certificate signer.
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The kubelet serving certificate signer.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// kube-controller-manager's `--cluster-signing-duration` default.
pub const CLUSTER_SIGNING_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The shortest certificate issued, whatever was asked (twice the backdate).
const MIN_DURATION: Duration = Duration::from_secs(10 * 60);

/// The CAs that sign, and the longest lifetime they give.
#[derive(Debug, Clone)]
pub struct Signers {
    /// Signs the two client signers.
    pub client_ca: CertAuthority,
    /// Signs kubelet serving certificates.
    pub server_ca: CertAuthority,
    /// The cluster signing duration (the most any certificate gets).
    pub duration: Duration,
}

impl Signers {
    fn ca_for(&self, signer: &str) -> Option<&CertAuthority> {
        match signer {
            KUBE_APISERVER_CLIENT | KUBE_APISERVER_CLIENT_KUBELET => Some(&self.client_ca),
            KUBELET_SERVING => Some(&self.server_ca),
            _ => None,
        }
    }

    /// The lifetime of a certificate for a request (upstream's
    /// `signer.duration`).
    pub fn lifetime(&self, expiration_seconds: Option<i32>) -> Duration {
        match expiration_seconds {
            None => self.duration,
            Some(s) => Duration::from_secs(s.max(0) as u64)
                .clamp(MIN_DURATION, self.duration.max(MIN_DURATION)),
        }
    }
}

fn usage_set(usages: &[String]) -> std::collections::BTreeSet<&str> {
    usages.iter().map(String::as_str).collect()
}

/// Whether `usages` is exactly one of `allowed` (as sets); else upstream's
/// message listing the first (sorted, as Go prints a string set).
fn usages_match(usages: &[String], allowed: &[&[&str]]) -> Result<(), String> {
    let have = usage_set(usages);
    if allowed
        .iter()
        .any(|a| a.iter().copied().collect::<std::collections::BTreeSet<_>>() == have)
    {
        return Ok(());
    }
    let mut first: Vec<&str> = allowed[0].to_vec();
    first.sort();
    Err(format!("usages did not match [{}]", first.join(" ")))
}

/// The rules of a signer for a request (upstream's `isRequestForSigner`
/// functions); `Err` with upstream's message when broken.
pub fn check_request(
    signer: &str,
    req: &CertificateRequest,
    usages: &[String],
) -> Result<(), String> {
    const NOT_NODES: &str = "subject organization is not system:nodes";
    const NOT_NODE: &str = "subject common name does not begin with system:node:";
    let nodes = req.organizations == ["system:nodes"];
    match signer {
        KUBE_APISERVER_CLIENT => {
            let mut client_auth = false;
            for u in usages {
                match u.as_str() {
                    "digital signature" | "key encipherment" => {}
                    "client auth" => client_auth = true,
                    other => return Err(format!("invalid usage for client certificate: {other}")),
                }
            }
            if !client_auth {
                return Err("missing required usage for client certificate: client auth".into());
            }
            Ok(())
        }
        KUBE_APISERVER_CLIENT_KUBELET => {
            if !nodes {
                return Err(NOT_NODES.into());
            }
            if !req.dns_names.is_empty() {
                return Err("DNS subjectAltNames are not allowed".into());
            }
            if !req.email_addresses.is_empty() {
                return Err("Email subjectAltNames are not allowed".into());
            }
            if !req.ip_addresses.is_empty() {
                return Err("IP subjectAltNames are not allowed".into());
            }
            if !req.uris.is_empty() {
                return Err("URI subjectAltNames are not allowed".into());
            }
            if !req.common_name.starts_with("system:node:") {
                return Err(NOT_NODE.into());
            }
            usages_match(
                usages,
                &[
                    &["digital signature", "key encipherment", "client auth"],
                    &["digital signature", "client auth"],
                ],
            )
        }
        KUBELET_SERVING => {
            if !nodes {
                return Err(NOT_NODES.into());
            }
            if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
                return Err("DNS or IP subjectAltName is required".into());
            }
            if !req.email_addresses.is_empty() {
                return Err("Email subjectAltNames are not allowed".into());
            }
            if !req.uris.is_empty() {
                return Err("URI subjectAltNames are not allowed".into());
            }
            usages_match(
                usages,
                &[
                    &["digital signature", "key encipherment", "server auth"],
                    &["digital signature", "server auth"],
                ],
            )?;
            if !req.common_name.starts_with("system:node:") {
                return Err(NOT_NODE.into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn has_true(csr: &CertificateSigningRequest, ty: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty && c.status == "True"))
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Nothing (not ours, not approved, failed or already issued).
    Skip,
    /// Mark it failed with this message.
    Fail(String),
    /// Issue this certificate.
    Issue(String),
}

fn decide(signers: &Signers, csr: &CertificateSigningRequest) -> Next {
    let spec = &csr.spec;
    let Some(ca) = signers.ca_for(&spec.signer_name) else {
        return Next::Skip;
    };
    let issued = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if issued || !has_true(csr, "Approved") || has_true(csr, "Failed") {
        return Next::Skip;
    }
    let req = match CertificateRequest::from_pem(&spec.request.0) {
        Ok(r) => r,
        // The apiserver validated it; a request it let through that no
        // longer parses is reported like any other refusal.
        Err(e) => return Next::Fail(e.to_string()),
    };
    let usages = spec.usages.clone().unwrap_or_default();
    if let Err(msg) = check_request(&spec.signer_name, &req, &usages) {
        return Next::Fail(msg);
    }
    match ca.sign_request(&req, &usages, signers.lifetime(spec.expiration_seconds)) {
        Ok(pem) => Next::Issue(pem),
        Err(e) => Next::Fail(e.to_string()),
    }
}

struct Ctx {
    client: kube::Client,
    signers: Signers,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    // The whole object goes back through `status` (upstream's
    // UpdateStatus, the verb its bootstrap role grants), at the version it
    // was read: a concurrent change is a conflict, and its event brings
    // the request back.
    let mut updated = CertificateSigningRequest::clone(&csr);
    let status = updated.status.get_or_insert_with(Default::default);
    match decide(&ctx.signers, &csr) {
        Next::Skip => return Ok(Action::await_change()),
        Next::Issue(pem) => {
            info!(csr = %name, signer = %csr.spec.signer_name, "signed certificate signing request");
            status.certificate = Some(ByteString(pem.into_bytes()));
        }
        Next::Fail(message) => {
            warn!(csr = %name, %message, "certificate signing request failed its signer's rules");
            status.conditions.get_or_insert_with(Vec::new).push(
                CertificateSigningRequestCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some("SignerValidationFailure".into()),
                    message: Some(message),
                    ..Default::default()
                },
            );
        }
    }
    match api
        .replace_status(&name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy(csr: Arc<CertificateSigningRequest>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(csr = ?csr.metadata.name, error = %e, "certificate signing failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Signs approved requests until `stop`.
pub async fn run(client: kube::Client, signers: Signers, stop: CancellationToken) {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, signers });
    info!("csrsigning controller started");
    Controller::new(csrs, watcher::Config::default())
        .graceful_shutdown_on(stop.cancelled_owned())
        .with_config(controller::Config::default().concurrency(2))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests;
