//! Users through CertificateSigningRequests, as an admin gives a person a
//! kubeconfig, with every real kubectl and the openssl CLI: a key and a
//! request for CN=jane, O=devs; `kubectl create` (the requester is written
//! into the spec); `kubectl get csr` columns; `kubectl certificate
//! approve` and the csrsigning controller issuing a one-hour client
//! certificate; a kubeconfig with it is user jane in group devs, refused
//! until a RoleBinding grants her; a denied request stays unsigned; a bad
//! PEM is upstream's 422 naming `spec.request`; an account without
//! `approve` on the signer cannot approve; `system:masters` cannot be
//! asked for.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use rke2_testbed::{Server, ServerOpts, kubectls};
use serde_json::{Value, json};

const SIGNER: &str = "kubernetes.io/kube-apiserver-client";

async fn start_server() -> (Server, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(Path::new(env!("CARGO_BIN_EXE_rke2")), ServerOpts::default())
        .expect("starting rke2 server");
    let client = server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    (server, client)
}

/// Sends a JSON request as the admin; (code, body).
async fn send(client: &kube::Client, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .unwrap();
    let resp = client
        .send(req.map(Into::into))
        .await
        .expect("request sent");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap_or_default();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn create(client: &kube::Client, path: &str, body: Value) {
    let (code, answer) = send(client, "POST", path, &body).await;
    assert_eq!(code, 201, "POST {path}: {answer}");
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("command runs")
}

fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    run(Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A private key and a PEM request for `subject` made with the openssl
/// CLI, as a person would (`rsa` or `ec` keys).
fn key_and_request(dir: &Path, name: &str, subject: &str, rsa: bool) -> (PathBuf, Vec<u8>) {
    let key = dir.join(format!("{name}.key"));
    let req = dir.join(format!("{name}.csr"));
    let o = if rsa {
        run(Command::new("openssl")
            .args([
                "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&req))
    } else {
        run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                subject,
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&req))
    };
    assert!(o.status.success(), "openssl req: {}", text(&o));
    (key, std::fs::read(&req).unwrap())
}

/// A CSR manifest (JSON is YAML) for the client signer.
fn csr_manifest(dir: &Path, name: &str, request: &[u8]) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let doc = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request),
            "signerName": SIGNER,
            "expirationSeconds": 3600,
            "usages": ["client auth"],
        },
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// The CSR as the admin's kubectl reads it.
fn get_csr(k: &Path, admin: &Path, name: &str) -> Value {
    let o = kubectl(k, admin, &["get", "csr", name, "-o", "json"]);
    assert!(o.status.success(), "get csr {name}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Polls until the CSR carries a certificate; its PEM.
fn wait_for_certificate(k: &Path, admin: &Path, name: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let csr = get_csr(k, admin, name);
        if let Some(cert) = csr["status"]["certificate"].as_str() {
            return base64::engine::general_purpose::STANDARD
                .decode(cert)
                .unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no certificate for {name} within 30 s: {csr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether openssl finds the certificate still valid `secs` from now.
fn valid_in(cert: &Path, secs: u64) -> bool {
    run(Command::new("openssl")
        .args(["x509", "-noout", "-checkend", &secs.to_string(), "-in"])
        .arg(cert))
    .status
    .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_gets_a_kubeconfig_through_a_certificate_signing_request() {
    let (server, client) = start_server().await;
    let dir = server.dir.path().to_path_buf();
    let admin = server.kubeconfig.clone();
    // What jane will be granted: reading pods.
    create(
        &client,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({"metadata": {"name": "pod-reader"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
    )
    .await;
    // An account that may create requests and write `approval`, but holds
    // no `approve` on any signer.
    create(
        &client,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "requester"}}),
    )
    .await;
    create(
        &client,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({"metadata": {"name": "csr-requester"}, "rules": [
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "list"]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval"], "verbs": ["update"]}]}),
    )
    .await;
    create(
        &client,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        json!({"metadata": {"name": "csr-requester"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-requester"},
            "subjects": [{"kind": "ServiceAccount", "name": "requester", "namespace": "default"}]}),
    )
    .await;
    let (code, answer) = send(
        &client,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/requester/token",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}),
    )
    .await;
    assert_eq!(code, 201, "token: {answer}");
    let requester = dir.join("requester.kubeconfig");
    rke2_testbed::token_kubeconfig(
        &admin,
        answer["status"]["token"].as_str().unwrap(),
        &requester,
    )
    .unwrap();

    for (i, (v, k)) in kubectls()
        .expect("kubectl binaries")
        .into_iter()
        .enumerate()
    {
        let ok = |kc: &Path, args: &[&str]| {
            let o = kubectl(&k, kc, args);
            assert!(o.status.success(), "kubectl 1.{v} {args:?}: {}", text(&o));
            String::from_utf8_lossy(&o.stdout).to_string()
        };
        let fails = |kc: &Path, args: &[&str]| {
            let o = kubectl(&k, kc, args);
            assert!(
                !o.status.success(),
                "kubectl 1.{v} {args:?} succeeded: {}",
                text(&o)
            );
            String::from_utf8_lossy(&o.stderr).to_string()
        };
        let name = format!("jane-1-{v}");
        let (key, request) = key_and_request(&dir, &name, "/CN=jane/O=devs", i % 2 == 0);
        ok(
            &admin,
            &[
                "create",
                "-f",
                csr_manifest(&dir, &name, &request).to_str().unwrap(),
            ],
        );

        // Pending, with kubectl's columns; the requester is the admin.
        let table = ok(&admin, &["get", "csr", &name]);
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "AGE",
                "SIGNERNAME",
                "REQUESTOR",
                "REQUESTEDDURATION",
                "CONDITION"
            ],
            "kubectl 1.{v}:\n{table}"
        );
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            (row[0], row[2], row[3], row[4], row[5]),
            (name.as_str(), SIGNER, "system:admin", "60m", "Pending"),
            "kubectl 1.{v}:\n{table}"
        );
        let stored = get_csr(&k, &admin, &name);
        assert_eq!(stored["spec"]["username"], "system:admin");
        assert!(
            stored["spec"]["groups"]
                .as_array()
                .unwrap()
                .contains(&json!("system:masters")),
            "kubectl 1.{v}: {stored}"
        );

        // A request denied first stays unsigned while jane's is signed.
        let denied = format!("denied-1-{v}");
        let (_, other) = key_and_request(&dir, &denied, "/CN=jane/O=devs", false);
        ok(
            &admin,
            &[
                "create",
                "-f",
                csr_manifest(&dir, &denied, &other).to_str().unwrap(),
            ],
        );
        let out = ok(&admin, &["certificate", "deny", &denied]);
        assert!(out.contains("denied"), "kubectl 1.{v}: {out}");

        let out = ok(&admin, &["certificate", "approve", &name]);
        assert!(
            out.contains(&format!(
                "certificatesigningrequest.certificates.k8s.io/{name} approved"
            )),
            "kubectl 1.{v}: {out}"
        );
        let cert_pem = wait_for_certificate(&k, &admin, &name);
        let approved = get_csr(&k, &admin, &name);
        let cond = &approved["status"]["conditions"][0];
        assert_eq!(
            (&cond["type"], &cond["status"], &cond["reason"]),
            (&json!("Approved"), &json!("True"), &json!("KubectlApprove")),
            "kubectl 1.{v}: {approved}"
        );
        assert!(cond["lastUpdateTime"].is_string(), "{approved}");
        let row = ok(&admin, &["get", "csr", &name, "--no-headers"]);
        assert!(
            row.split_whitespace().last() == Some("Approved,Issued"),
            "kubectl 1.{v}: {row}"
        );

        let denied_csr = get_csr(&k, &admin, &denied);
        assert!(
            denied_csr["status"]["certificate"].is_null(),
            "kubectl 1.{v}: {denied_csr}"
        );
        assert_eq!(
            denied_csr["status"]["conditions"][0]["type"], "Denied",
            "{denied_csr}"
        );
        let row = ok(&admin, &["get", "csr", &denied, "--no-headers"]);
        assert_eq!(
            row.split_whitespace().last(),
            Some("Denied"),
            "kubectl 1.{v}: {row}"
        );

        // The certificate: CN/O from the request, client CA, about an hour.
        let der = rke2_trust::parse_certs(&cert_pem).unwrap().remove(0);
        assert_eq!(
            rke2_trust::peer_identity(der.as_ref()).unwrap(),
            ("jane".to_string(), vec!["devs".to_string()])
        );
        let cert = dir.join(format!("{name}.crt"));
        std::fs::write(&cert, &cert_pem).unwrap();
        assert!(valid_in(&cert, 3500), "valid for most of an hour");
        assert!(!valid_in(&cert, 3700), "not much longer than an hour");
        let o = run(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(server.dir.path().join("data/server/tls/client-ca.crt"))
            .arg(&cert));
        assert!(o.status.success(), "openssl verify: {}", text(&o));

        // jane's kubeconfig: the admin's cluster with her key and cert.
        let jane = dir.join(format!("{name}.kubeconfig"));
        std::fs::copy(&admin, &jane).unwrap();
        ok(
            &jane,
            &[
                "config",
                "set-credentials",
                "default",
                &format!("--client-certificate={}", cert.display()),
                &format!("--client-key={}", key.display()),
                "--embed-certs=true",
            ],
        );
        let who: Value =
            serde_json::from_str(&ok(&jane, &["auth", "whoami", "-o", "json"])).unwrap();
        assert_eq!(
            who["status"]["userInfo"]["username"], "jane",
            "kubectl 1.{v}: {who}"
        );
        assert_eq!(
            who["status"]["userInfo"]["groups"],
            json!(["devs", "system:authenticated"]),
            "kubectl 1.{v}: {who}"
        );
        let err = fails(&jane, &["get", "pods"]);
        assert!(
            err.contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
            "kubectl 1.{v}: {err}"
        );
        // Bound by user name, or (every other version) by group.
        let subject = if i % 2 == 0 {
            "--user=jane"
        } else {
            "--group=devs"
        };
        ok(
            &admin,
            &[
                "create",
                "rolebinding",
                "jane-view",
                "--clusterrole=pod-reader",
                subject,
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = kubectl(&k, &jane, &["get", "pods"]);
            if o.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl 1.{v}: jane still refused after the binding: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let err = fails(&jane, &["get", "secrets"]);
        assert!(
            err.contains("cannot list resource \"secrets\""),
            "kubectl 1.{v}: {err}"
        );
        ok(&admin, &["delete", "rolebinding", "jane-view"]);

        // A bad PEM: upstream's 422 naming spec.request.
        let bad = format!("bad-1-{v}");
        let err = fails(
            &admin,
            &[
                "create",
                "-f",
                csr_manifest(&dir, &bad, b"not a pem").to_str().unwrap(),
            ],
        );
        assert!(
            err.contains(&format!("\"{bad}\" is invalid: spec.request: Invalid value: []byte{{0x6e, 0x6f, 0x74, 0x20, 0x61, 0x20, 0x70, 0x65, 0x6d}}: PEM block type must be CERTIFICATE REQUEST")),
            "kubectl 1.{v}: {err}"
        );

        // An account without `approve` on the signer: its request is its
        // own, and it cannot approve it.
        let own = format!("requester-1-{v}");
        let (_, req) = key_and_request(&dir, &own, "/CN=requester", false);
        ok(
            &requester,
            &[
                "create",
                "-f",
                csr_manifest(&dir, &own, &req).to_str().unwrap(),
            ],
        );
        assert_eq!(
            get_csr(&k, &admin, &own)["spec"]["username"],
            "system:serviceaccount:default:requester"
        );
        let err = fails(&requester, &["certificate", "approve", &own]);
        assert!(
            err.contains(&format!("certificatesigningrequests.certificates.k8s.io \"{own}\" is forbidden: user not permitted to approve requests with signerName \"{SIGNER}\"")),
            "kubectl 1.{v}: {err}"
        );
        let row = ok(&admin, &["get", "csr", &own, "--no-headers"]);
        assert_eq!(
            row.split_whitespace().last(),
            Some("Pending"),
            "kubectl 1.{v}: {row}"
        );
    }

    // Asking the client signer for system:masters is refused at create.
    let (_, req) = key_and_request(&dir, "mallory", "/CN=mallory/O=system:masters", false);
    let (code, answer) = send(
        &client,
        "POST",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        &json!({"metadata": {"name": "mallory"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(&req),
            "signerName": SIGNER, "usages": ["client auth"]}}),
    )
    .await;
    assert_eq!(code, 403, "{answer}");
    assert_eq!(
        answer["message"],
        "certificatesigningrequests.certificates.k8s.io \"mallory\" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
    );

    // A request that breaks its signer's rules fails instead of being
    // signed: a kubelet signer request for a person.
    let (_, req) = key_and_request(&dir, "not-a-node", "/CN=jane/O=devs", false);
    create(
        &client,
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        json!({"metadata": {"name": "not-a-node"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(&req),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"]}}),
    )
    .await;
    let (code, answer) = send(
        &client,
        "PUT",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/not-a-node/approval",
        &json!({"metadata": {"name": "not-a-node"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(&req),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"]},
            "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "Test"}]}}),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, csr) = send(
            &client,
            "GET",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/not-a-node",
            &Value::Null,
        )
        .await;
        let conditions = csr["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(failed) = conditions.iter().find(|c| c["type"] == "Failed") {
            assert_eq!(failed["reason"], "SignerValidationFailure");
            assert_eq!(
                failed["message"],
                "subject organization is not system:nodes"
            );
            assert!(csr["status"]["certificate"].is_null(), "{csr}");
            // Denying an approved request is refused: the two exclude
            // each other.
            let mut both = csr.clone();
            both["status"]["conditions"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "Denied", "status": "True"}));
            let (code, answer) = send(
                &client,
                "PUT",
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/not-a-node/approval",
                &both,
            )
            .await;
            assert_eq!(code, 422, "{answer}");
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .ends_with("is invalid: status.conditions[2].type: Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive"),
                "{answer}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no Failed condition: {csr}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
