use super::*;
use serde_json::json;

fn request(cn: &str, org: Option<&str>, sans: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if let Some(o) = org {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, o);
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn parsed(cn: &str, org: Option<&str>, sans: &[&str]) -> CertificateRequest {
    CertificateRequest::from_pem(request(cn, org, sans).as_bytes()).unwrap()
}

fn usages(u: &[&str]) -> Vec<String> {
    u.iter().map(|s| s.to_string()).collect()
}

fn signers() -> (Signers, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = |n: &str| {
        CertAuthority::ensure(
            &dir.path().join(format!("{n}.crt")),
            &dir.path().join(format!("{n}.key")),
            n,
        )
        .unwrap()
    };
    let s = Signers {
        client_ca: ca("client-ca"),
        server_ca: ca("server-ca"),
        duration: CLUSTER_SIGNING_DURATION,
    };
    (s, dir)
}

fn csr(
    pem: &str,
    signer: &str,
    u: &[&str],
    conditions: serde_json::Value,
) -> CertificateSigningRequest {
    serde_json::from_value(json!({
        "metadata": {"name": "x", "resourceVersion": "7"},
        "spec": {
            "request": ByteString(pem.as_bytes().to_vec()),
            "signerName": signer,
            "usages": u,
            "expirationSeconds": 3600,
        },
        "status": {"conditions": conditions},
    }))
    .unwrap()
}

#[test]
fn client_signer_rules_are_upstreams() {
    let jane = parsed("jane", Some("devs"), &[]);
    let check = |u: &[&str]| check_request(KUBE_APISERVER_CLIENT, &jane, &usages(u));
    assert_eq!(check(&["client auth"]), Ok(()));
    assert_eq!(
        check(&["digital signature", "key encipherment", "client auth"]),
        Ok(())
    );
    assert_eq!(
        check(&["client auth", "server auth"]),
        Err("invalid usage for client certificate: server auth".into())
    );
    assert_eq!(
        check(&["digital signature"]),
        Err("missing required usage for client certificate: client auth".into())
    );
}

#[test]
fn kubelet_signer_rules_are_upstreams() {
    let kubelet = |req: &CertificateRequest, u: &[&str]| {
        check_request(KUBE_APISERVER_CLIENT_KUBELET, req, &usages(u))
    };
    let node = parsed("system:node:n1", Some("system:nodes"), &[]);
    assert_eq!(
        kubelet(&node, &["digital signature", "client auth"]),
        Ok(())
    );
    assert_eq!(
        kubelet(
            &node,
            &["key encipherment", "digital signature", "client auth"]
        ),
        Ok(())
    );
    assert_eq!(
        kubelet(&node, &["client auth"]),
        Err("usages did not match [client auth digital signature key encipherment]".into())
    );
    assert_eq!(
        kubelet(
            &parsed("system:node:n1", Some("devs"), &[]),
            &["client auth"]
        ),
        Err("subject organization is not system:nodes".into())
    );
    assert_eq!(
        kubelet(
            &parsed("jane", Some("system:nodes"), &[]),
            &["digital signature", "client auth"]
        ),
        Err("subject common name does not begin with system:node:".into())
    );
    assert_eq!(
        kubelet(
            &parsed("system:node:n1", Some("system:nodes"), &["n1"]),
            &["digital signature", "client auth"]
        ),
        Err("DNS subjectAltNames are not allowed".into())
    );
    assert_eq!(
        kubelet(
            &parsed("system:node:n1", Some("system:nodes"), &["10.0.0.1"]),
            &["digital signature", "client auth"]
        ),
        Err("IP subjectAltNames are not allowed".into())
    );
    let serving =
        |req: &CertificateRequest, u: &[&str]| check_request(KUBELET_SERVING, req, &usages(u));
    assert_eq!(
        serving(&node, &["digital signature", "server auth"]),
        Err("DNS or IP subjectAltName is required".into())
    );
    assert_eq!(
        serving(
            &parsed("system:node:n1", Some("system:nodes"), &["n1"]),
            &["digital signature", "server auth"]
        ),
        Ok(())
    );
}

#[test]
fn lifetimes_are_clamped_as_upstream() {
    let (s, _dir) = signers();
    assert_eq!(s.lifetime(None), CLUSTER_SIGNING_DURATION);
    assert_eq!(s.lifetime(Some(3600)), Duration::from_secs(3600));
    assert_eq!(s.lifetime(Some(60)), Duration::from_secs(600));
    assert_eq!(s.lifetime(Some(i32::MAX)), CLUSTER_SIGNING_DURATION);
}

#[test]
fn only_approved_unsigned_requests_of_known_signers_are_signed() {
    let (s, _dir) = signers();
    let pem = request("jane", Some("devs"), &[]);
    let approved = json!([{"type": "Approved", "status": "True"}]);
    assert_eq!(
        decide(
            &s,
            &csr(&pem, KUBE_APISERVER_CLIENT, &["client auth"], json!([]))
        ),
        Next::Skip
    );
    assert_eq!(
        decide(
            &s,
            &csr(
                &pem,
                KUBE_APISERVER_CLIENT,
                &["client auth"],
                json!([{"type": "Denied", "status": "True"}])
            )
        ),
        Next::Skip
    );
    assert_eq!(
        decide(
            &s,
            &csr(
                &pem,
                "example.com/other",
                &["client auth"],
                approved.clone()
            )
        ),
        Next::Skip
    );
    let failed =
        json!([{"type": "Approved", "status": "True"}, {"type": "Failed", "status": "True"}]);
    assert_eq!(
        decide(
            &s,
            &csr(&pem, KUBE_APISERVER_CLIENT, &["client auth"], failed)
        ),
        Next::Skip
    );
    let Next::Issue(cert) = decide(
        &s,
        &csr(
            &pem,
            KUBE_APISERVER_CLIENT,
            &["client auth"],
            approved.clone(),
        ),
    ) else {
        panic!("an approved request is signed");
    };
    // Issued by the client CA: the apiserver's client verifier accepts it.
    let der = rke2_trust::parse_certs(cert.as_bytes()).unwrap().remove(0);
    assert_eq!(
        rke2_trust::peer_identity(der.as_ref()).unwrap(),
        ("jane".to_string(), vec!["devs".to_string()])
    );
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in rke2_trust::parse_certs(s.client_ca.cert_pem.as_bytes()).unwrap() {
            r.add(c).unwrap();
        }
        std::sync::Arc::new(r)
    };
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, rke2_trust::provider())
            .build()
            .unwrap();
    verifier
        .verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
        .expect("the client CA verifies the certificate");

    let mut with_cert = csr(
        &pem,
        KUBE_APISERVER_CLIENT,
        &["client auth"],
        approved.clone(),
    );
    with_cert.status.as_mut().unwrap().certificate = Some(ByteString(cert.into_bytes()));
    assert_eq!(decide(&s, &with_cert), Next::Skip);

    assert_eq!(
        decide(
            &s,
            &csr(
                &pem,
                KUBE_APISERVER_CLIENT_KUBELET,
                &["client auth"],
                approved
            )
        ),
        Next::Fail("subject organization is not system:nodes".into())
    );
}
