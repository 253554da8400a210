use super::*;

fn request_pem(cn: &str, orgs: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if let Some(o) = orgs.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *o);
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn csr(pem: &str) -> Value {
    json!({
        "metadata": {"name": "jane"},
        "spec": {
            "request": b64(pem),
            "signerName": KUBE_APISERVER_CLIENT,
            "usages": ["client auth"],
            "expirationSeconds": 3600,
        },
        "status": {},
    })
}

fn causes_of(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate(obj, &mut causes);
    causes
}

fn cause(field: &str, ty: &str, detail: &str) -> Cause {
    (field.into(), ty.into(), detail.into())
}

#[test]
fn a_good_request_validates() {
    assert_eq!(causes_of(&csr(&request_pem("jane", &["devs"]))), vec![]);
}

#[test]
fn a_bad_pem_names_spec_request_as_upstream() {
    let mut obj = csr("");
    obj["spec"]["request"] = json!(b64("not a pem\n"));
    assert_eq!(
        causes_of(&obj),
        vec![cause(
            "spec.request",
            "Invalid value",
            "[]byte{0x6e, 0x6f, 0x74, 0x20, 0x61, 0x20, 0x70, 0x65, 0x6d, 0xa}: PEM block type must be CERTIFICATE REQUEST"
        )]
    );
    let certificate = request_pem("jane", &[]).replace("CERTIFICATE REQUEST", "CERTIFICATE");
    obj["spec"]["request"] = json!(b64(&certificate));
    let c = causes_of(&obj);
    assert_eq!(c.len(), 1);
    assert!(
        c[0].2
            .ends_with(": PEM block type must be CERTIFICATE REQUEST"),
        "{c:?}"
    );
    assert_eq!(go_bytes(None), "[]byte(nil)");
    assert_eq!(go_bytes(Some(&[])), "[]byte{}");
}

#[test]
fn usages_signer_and_expiration_follow_upstream_rules() {
    let pem = request_pem("jane", &[]);
    let mut obj = csr(&pem);
    obj["spec"]["usages"] = json!([]);
    assert_eq!(
        causes_of(&obj),
        vec![cause("spec.usages", "Required value", "")]
    );
    obj["spec"]["usages"] = json!(["client auth", "flying", "client auth"]);
    let c = causes_of(&obj);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0].0, "spec.usages[1]");
    assert_eq!(c[0].1, "Unsupported value");
    assert!(
        c[0].2
            .starts_with("\"flying\": supported values: \"any\", \"cert sign\", \"client auth\""),
        "{}",
        c[0].2
    );
    assert_eq!(
        c[1],
        cause("spec.usages[2]", "Duplicate value", "\"client auth\"")
    );

    let signer_causes = |signer: &str| {
        let mut o = csr(&pem);
        o["spec"]["signerName"] = json!(signer);
        causes_of(&o)
    };
    assert_eq!(
        signer_causes(""),
        vec![cause("spec.signerName", "Required value", "")]
    );
    assert_eq!(
        signer_causes("signer"),
        vec![cause(
            "spec.signerName",
            "Invalid value",
            "\"signer\": must be a fully qualified domain and path of the form 'example.com/signer-name'"
        )]
    );
    assert_eq!(
        signer_causes("example/signer"),
        vec![cause(
            "spec.signerName",
            "Invalid value",
            "\"example\": should be a domain with at least two segments separated by dots"
        )]
    );
    assert_eq!(
        signer_causes(LEGACY_UNKNOWN),
        vec![cause(
            "spec.signerName",
            "Invalid value",
            "\"kubernetes.io/legacy-unknown\": the legacy signerName is not allowed via this API version"
        )]
    );
    let bad_label = signer_causes("Example.com/signer");
    assert_eq!(bad_label.len(), 1);
    assert!(
        bad_label[0].2.starts_with(
            "\"Example.com\": validating label \"Example\": a lowercase RFC 1123 label"
        ),
        "{bad_label:?}"
    );
    assert!(signer_causes("example.com/my-signer").is_empty());

    obj = csr(&pem);
    obj["spec"]["expirationSeconds"] = json!(599);
    assert_eq!(
        causes_of(&obj),
        vec![cause(
            "spec.expirationSeconds",
            "Invalid value",
            "599: may not specify a duration less than 600 seconds (10 minutes)"
        )]
    );
}

#[test]
fn conditions_are_checked_as_upstream() {
    let mut obj = csr(&request_pem("jane", &[]));
    obj["status"]["conditions"] = json!([
        {"type": "Approved", "status": "True"},
        {"type": "Denied", "status": "True"},
        {"type": "Approved", "status": "False"},
        {"type": "", "status": ""},
    ]);
    assert_eq!(
        causes_of(&obj),
        vec![
            cause(
                "status.conditions[1].type",
                "Invalid value",
                "\"Denied\": Approved and Denied conditions are mutually exclusive"
            ),
            cause(
                "status.conditions[2].status",
                "Unsupported value",
                "\"False\": supported values: \"True\""
            ),
            cause(
                "status.conditions[2].type",
                "Invalid value",
                "\"Approved\": Approved and Denied conditions are mutually exclusive"
            ),
            cause(
                "status.conditions[2].type",
                "Duplicate value",
                "\"Approved\""
            ),
            cause("status.conditions[3].type", "Required value", ""),
            cause("status.conditions[3].status", "Required value", ""),
        ]
    );
    obj["status"] = json!({"certificate": b64("junk")});
    assert_eq!(
        causes_of(&obj),
        vec![cause(
            "status.certificate",
            "Invalid value",
            "\"<certificate data>\": must contain at least one CERTIFICATE PEM block"
        )]
    );
}

#[test]
fn the_requester_is_written_into_the_spec() {
    let mut obj = csr(&request_pem("jane", &[]));
    obj["spec"]["username"] = json!("admin");
    obj["spec"]["groups"] = json!(["system:masters"]);
    obj["spec"]["uid"] = json!("forged");
    obj["spec"]["extra"] = json!({"k": ["v"]});
    obj["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
    let id = Identity {
        user: "system:serviceaccount:ns:sa".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:authenticated".into(),
        ],
    };
    prepare_create(&mut obj, &id);
    assert_eq!(obj["spec"]["username"], "system:serviceaccount:ns:sa");
    assert_eq!(
        obj["spec"]["groups"],
        json!(["system:serviceaccounts", "system:authenticated"])
    );
    assert!(obj["spec"].get("uid").is_none() && obj["spec"].get("extra").is_none());
    assert_eq!(obj["status"], json!({}));
}

#[test]
fn updates_change_only_what_their_path_allows() {
    let old = csr(&request_pem("jane", &[]));
    let now = "2026-01-01T00:00:00Z";

    // The object: spec and status stay.
    let mut new = old.clone();
    new["spec"]["usages"] = json!(["server auth"]);
    new["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
    assert!(prepare_update(&old, &mut new, UpdatePath::Main, now).is_empty());
    assert_eq!(new, old);

    // `approval`: conditions, stamped; the spec stays.
    let mut approved = old.clone();
    approved["spec"]["signerName"] = json!("example.com/other");
    approved["status"]["conditions"] =
        json!([{"type": "Approved", "status": "True", "reason": "KubectlApprove"}]);
    assert!(prepare_update(&old, &mut approved, UpdatePath::Approval, now).is_empty());
    assert_eq!(approved["spec"], old["spec"]);
    let c = &approved["status"]["conditions"][0];
    assert_eq!(
        (
            c["lastUpdateTime"].as_str(),
            c["lastTransitionTime"].as_str()
        ),
        (Some(now), Some(now))
    );
    assert_eq!(condition_summary(&approved), "Approved");

    // Taking the approval back, or adding a denial, is refused.
    let mut removed = approved.clone();
    removed["status"]["conditions"] = json!([]);
    assert_eq!(
        prepare_update(&approved, &mut removed, UpdatePath::Approval, now),
        vec![cause(
            "status.conditions",
            "Forbidden",
            "updates may not remove a condition of type \"Approved\""
        )]
    );
    let mut both = approved.clone();
    both["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "Denied", "status": "True"}));
    assert!(prepare_update(&approved, &mut both, UpdatePath::Approval, now).is_empty());
    assert_eq!(
        causes_of(&both),
        vec![cause(
            "status.conditions[1].type",
            "Invalid value",
            "\"Denied\": Approved and Denied conditions are mutually exclusive"
        )]
    );

    // `status`: the certificate once; no approval through it.
    let mut issued = approved.clone();
    issued["status"]["certificate"] = json!(b64("-----BEGIN CERTIFICATE-----\n"));
    assert!(prepare_update(&approved, &mut issued, UpdatePath::Status, now).is_empty());
    assert_eq!(
        issued["status"]["conditions"],
        approved["status"]["conditions"]
    );
    let mut again = issued.clone();
    again["status"]["certificate"] = json!(b64("other"));
    assert_eq!(
        prepare_update(&issued, &mut again, UpdatePath::Status, now),
        vec![cause(
            "status.certificate",
            "Forbidden",
            "updates may not modify existing certificate content"
        )]
    );
    let mut self_approved = old.clone();
    self_approved["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
    assert_eq!(
        prepare_update(&old, &mut self_approved, UpdatePath::Status, now),
        vec![cause(
            "status.conditions",
            "Forbidden",
            "updates may not add a condition of type \"Approved\""
        )]
    );
    // A modified approval through `status` is put back as it was.
    let mut edited = approved.clone();
    edited["status"]["conditions"][0]["message"] = json!("edited");
    assert!(prepare_update(&approved, &mut edited, UpdatePath::Status, now).is_empty());
    assert_eq!(
        edited["status"]["conditions"],
        approved["status"]["conditions"]
    );
    // Failed may be added there (the signer does).
    let mut failed = approved.clone();
    failed["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure"}));
    assert!(prepare_update(&approved, &mut failed, UpdatePath::Status, now).is_empty());
    assert_eq!(condition_summary(&failed), "Approved,Failed");
    assert_eq!(condition_summary(&issued), "Approved,Issued");
    assert_eq!(condition_summary(&old), "Pending");
}

#[test]
fn the_client_signer_refuses_system_masters() {
    let reg = crate::registry::find(GROUP, "v1", "certificatesigningrequests").unwrap();
    let obj = csr(&request_pem("mallory", &["system:masters"]));
    let e = admit_create(reg, &obj).unwrap_err();
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        "certificatesigningrequests.certificates.k8s.io \"jane\" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
    );
    // Another signer is not this plugin's business.
    let mut other = obj.clone();
    other["spec"]["signerName"] = json!("example.com/signer");
    assert!(admit_create(reg, &other).is_ok());
    assert!(admit_create(reg, &csr(&request_pem("jane", &["devs"]))).is_ok());
}

#[test]
fn names_only_need_to_be_path_segments() {
    let rt = crate::registry::find(GROUP, "v1", "certificatesigningrequests").unwrap();
    let mut obj = csr(&request_pem("jane", &[]));
    obj["metadata"]["name"] = json!("jane@example.com:laptop");
    assert!(crate::objects::validate(rt, &obj).is_ok());
    obj["metadata"]["name"] = json!("a/b");
    let e = crate::objects::validate(rt, &obj).unwrap_err();
    assert_eq!(e.code, 422, "{}", e.message);
    assert!(e.message.contains("metadata.name"), "{}", e.message);
}
