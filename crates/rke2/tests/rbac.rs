//! Authorization as kube-apiserver's chain answers it, through every real
//! kubectl: ServiceAccount tokens get what their Roles and bindings
//! grant and upstream's Forbidden otherwise; `kubectl auth can-i` (and
//! `--list`, `--as`) answer from the same rules; impersonation needs the
//! `impersonate` verb; role and binding writes cannot grant more than the
//! writer holds; access reviews refuse bad input.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use rke2_testbed::{Server, ServerOpts, kubectls};
use serde_json::{Value, json};

async fn start_server() -> (Server, kube::Client) {
    start_server_with(ServerOpts::default()).await
}

async fn start_server_with(opts: ServerOpts) -> (Server, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server =
        Server::start(Path::new(env!("CARGO_BIN_EXE_rke2")), opts).expect("starting rke2 server");
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

/// A kubeconfig with a token of service account `ns/name`.
async fn token_kubeconfig(server: &Server, client: &kube::Client, ns: &str, name: &str) -> PathBuf {
    let (code, answer) = send(
        client,
        "POST",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"),
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}),
    )
    .await;
    assert_eq!(code, 201, "token for {ns}/{name}: {answer}");
    let token = answer["status"]["token"].as_str().unwrap();
    let path = server.dir.path().join(format!("{ns}-{name}.kubeconfig"));
    rke2_testbed::token_kubeconfig(&server.kubeconfig, token, &path).unwrap();
    path
}

fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_get_what_rbac_grants() {
    // An audit policy recording pods at Metadata (RKE2's
    // `audit-policy-file`): who acted must be the impersonator.
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  resources:\n  - group: \"\"\n    resources: [pods]\n",
    )
    .unwrap();
    let (server, client) = start_server_with(ServerOpts {
        config_yaml: Some(format!("audit-policy-file: {}\n", policy.display())),
        ..Default::default()
    })
    .await;
    let ns = "team";
    create(
        &client,
        "/api/v1/namespaces",
        json!({"metadata": {"name": ns}}),
    )
    .await;
    for sa in ["reader", "manager"] {
        create(
            &client,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            json!({"metadata": {"name": sa}}),
        )
        .await;
    }
    let roles = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles");
    let bindings = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings");
    create(&client, &roles, json!({"metadata": {"name": "pod-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]})).await;
    create(
        &client,
        &bindings,
        json!({"metadata": {"name": "reader-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]}),
    )
    .await;
    // The manager may write roles and bindings here, and read pods and
    // configmaps, nothing else.
    create(&client, &roles, json!({"metadata": {"name": "rbac-manager"}, "rules": [
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "get", "list", "update", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list"]}]})).await;
    create(&client, &bindings, json!({"metadata": {"name": "manager"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rbac-manager"},
        "subjects": [{"kind": "ServiceAccount", "name": "manager"}]})).await;
    // A cluster role granting secrets, bound nowhere yet.
    create(
        &client,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({"metadata": {"name": "secret-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]}),
    )
    .await;
    create(
        &client,
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        json!({"metadata": {"name": "c"}}),
    )
    .await;

    let reader = token_kubeconfig(&server, &client, ns, "reader").await;
    let manager = token_kubeconfig(&server, &client, ns, "manager").await;
    let admin = server.kubeconfig.clone();
    let user = format!("system:serviceaccount:{ns}:reader");

    for (v, k) in kubectls().expect("kubectl binaries") {
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
        // What the Role grants, and upstream's Forbidden for the rest.
        ok(&reader, &["-n", ns, "get", "pods"]);
        let err = fails(&reader, &["-n", ns, "get", "secrets"]);
        assert!(
            err.contains(&format!("Error from server (Forbidden): secrets is forbidden: User \"{user}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{ns}\"")),
            "kubectl 1.{v}: {err}"
        );
        let err = fails(&reader, &["-n", "default", "get", "pods"]);
        assert!(
            err.contains(
                "cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
            ),
            "kubectl 1.{v}: {err}"
        );

        // can-i, as the account and as the admin impersonating it.
        for (kc, extra) in [(&reader, vec![]), (&admin, vec!["--as", user.as_str()])] {
            let can = |what: &[&str]| {
                let mut args = vec!["auth", "can-i"];
                args.extend_from_slice(what);
                args.extend(["-n", ns]);
                args.extend(extra.iter().copied());
                let o = kubectl(&k, kc, &args);
                assert!(
                    !String::from_utf8_lossy(&o.stdout).trim().is_empty(),
                    "kubectl 1.{v} {args:?}: {}",
                    text(&o)
                );
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).trim().to_string(),
                )
            };
            assert_eq!(
                can(&["list", "pods"]),
                (true, "yes".into()),
                "kubectl 1.{v} {extra:?}"
            );
            assert_eq!(
                can(&["get", "pods/log"]),
                (true, "yes".into()),
                "kubectl 1.{v} {extra:?}"
            );
            assert_eq!(
                can(&["list", "secrets"]),
                (false, "no".into()),
                "kubectl 1.{v} {extra:?}"
            );
            assert_eq!(
                can(&["create", "pods"]),
                (false, "no".into()),
                "kubectl 1.{v} {extra:?}"
            );
        }
        let list = ok(&reader, &["auth", "can-i", "--list", "-n", ns]);
        let pods_row = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some("pods"))
            .unwrap_or_else(|| panic!("kubectl 1.{v} can-i --list has no pods row:\n{list}"));
        assert!(
            pods_row.contains("[get list watch]"),
            "kubectl 1.{v}: {pods_row}"
        );
        assert!(
            !list.lines().any(|l| l.starts_with("secrets")),
            "kubectl 1.{v}:\n{list}"
        );

        // Impersonation needs the verb: the reader may not, the admin may.
        let err = fails(&reader, &["--as", "bob", "-n", ns, "get", "pods"]);
        assert!(
            err.contains(&format!("users \"bob\" is forbidden: User \"{user}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope")),
            "kubectl 1.{v}: {err}"
        );
        let err = fails(
            &admin,
            &["--as", "bob", "--as-group", "devs", "-n", ns, "get", "pods"],
        );
        assert!(
            err.contains("User \"bob\" cannot list resource \"pods\""),
            "kubectl 1.{v}: the admin acts as bob, who holds nothing: {err}"
        );
        let who = ok(
            &admin,
            &[
                "--as",
                "bob",
                "--as-group",
                "devs",
                "auth",
                "whoami",
                "-o",
                "json",
            ],
        );
        let who: Value = serde_json::from_str(&who).unwrap();
        assert_eq!(
            who["status"]["userInfo"]["username"], "bob",
            "kubectl 1.{v}"
        );
        assert_eq!(
            who["status"]["userInfo"]["groups"],
            json!(["devs", "system:authenticated"]),
            "kubectl 1.{v}"
        );
    }

    // The audit log names the admin as the one who acted as bob, with the
    // answer; only pods are recorded, as the policy says.
    let audit_log = server.data_dir.join("server/logs/audit.log");
    let events: Vec<Value> = std::fs::read_to_string(&audit_log)
        .unwrap_or_else(|e| panic!("{}: {e}", audit_log.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let as_bob = events
        .iter()
        .find(|e| {
            e["impersonatedUser"]["username"] == "bob"
                && e["verb"] == "list"
                && e["responseStatus"]["code"] == 403
        })
        .unwrap_or_else(|| panic!("no audit event of the admin listing pods as bob: {events:#?}"));
    assert_eq!(as_bob["stage"], "ResponseComplete");
    assert_eq!(as_bob["user"]["username"], "system:admin", "{as_bob}");
    assert_eq!(as_bob["objectRef"]["resource"], "pods");
    assert_eq!(as_bob["objectRef"]["namespace"], ns);
    assert_eq!(
        as_bob["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert!(
        as_bob["userAgent"]
            .as_str()
            .unwrap_or("")
            .starts_with("kubectl"),
        "{as_bob}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["objectRef"]["resource"] == "pods" && e["stage"] != "RequestReceived"),
        "only pods, without the omitted stage"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&audit_log).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Non-resource paths go through RBAC too: discovery is granted to every
    // authenticated user by the bootstrap policy, other paths are not.
    let k = kubectls().unwrap().pop().unwrap().1;
    for path in ["/api", "/apis", "/apis/apps/v1", "/openapi/v2"] {
        let o = kubectl(&k, &reader, &["get", "--raw", path]);
        assert!(o.status.success(), "{path}: {}", text(&o));
    }
    let o = kubectl(&k, &reader, &["get", "--raw", "/metrics"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "forbidden: User \"{user}\" cannot get path \"/metrics\""
        )),
        "{}",
        text(&o)
    );

    // Escalation prevention, as the manager: a Role within its own rules
    // is fine, one beyond them is upstream's Forbidden; so is a binding to
    // a role it does not hold, until it may `bind` that role.
    let apply = |kc: &Path, doc: Value| {
        let file = server.dir.path().join("doc.json");
        std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
        kubectl(&k, kc, &["create", "-f", file.to_str().unwrap()])
    };
    let o = apply(
        &manager,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "cm-reader", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = apply(
        &manager,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "too-much", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get", "delete"]}]}),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "escalating role created");
    assert!(
        err.contains(&format!("roles.rbac.authorization.k8s.io \"too-much\" is forbidden: user \"system:serviceaccount:{ns}:manager\" (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:{ns}\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:")),
        "{err}"
    );
    assert!(
        err.contains(r#"{APIGroups:[""], Resources:["configmaps"], Verbs:["delete"]}"#),
        "{err}"
    );
    assert!(
        err.contains(r#"{APIGroups:[""], Resources:["secrets"], Verbs:["delete" "get"]}"#),
        "{err}"
    );
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "secrets-for-reader", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]});
    let o = apply(&manager, binding.clone());
    assert!(!o.status.success(), "escalating binding created");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "rolebindings.rbac.authorization.k8s.io \"secrets-for-reader\" is forbidden: user"
        ),
        "{}",
        text(&o)
    );
    create(&client, &roles, json!({"metadata": {"name": "bind-secret-reader"}, "rules": [
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["secret-reader"]}]})).await;
    create(&client, &bindings, json!({"metadata": {"name": "manager-binds"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bind-secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "manager", "namespace": ns}]})).await;
    let o = apply(&manager, binding);
    assert!(o.status.success(), "with bind: {}", text(&o));
    // The binding takes effect: the reader now reads secrets in the namespace.
    let o = kubectl(&k, &reader, &["-n", ns, "get", "secrets"]);
    assert!(o.status.success(), "{}", text(&o));

    // Access reviews: a SubjectAccessReview needs its own permission;
    // the admin may ask; malformed specs are 4xx naming the field.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts"], "resourceAttributes": {"namespace": ns, "verb": "get", "resource": "secrets"}}});
    let (code, answer) = send(
        &client,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        &sar,
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["status"]["allowed"], true, "{answer}");
    let mut denied = sar.clone();
    denied["spec"]["resourceAttributes"]["verb"] = json!("delete");
    let (_, answer) = send(
        &client,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        &denied,
    )
    .await;
    assert_eq!(answer["status"]["allowed"], false, "{answer}");
    for (body, want, field) in [
        (
            json!({"spec": {"user": "x"}}),
            422,
            "spec.resourceAttributes",
        ),
        (
            json!({"spec": {"resourceAttributes": {"verb": "get"}}}),
            422,
            "spec.user",
        ),
        (
            json!({"spec": {"user": "x", "resourceAttributes": {"resource": "pods"}}}),
            422,
            "spec.resourceAttributes.verb",
        ),
        (
            json!({"spec": {"user": "x", "resourceAttributes": {"verb": ["get"]}}}),
            400,
            "spec.resourceAttributes.verb",
        ),
    ] {
        let (code, answer) = send(
            &client,
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &body,
        )
        .await;
        assert_eq!(code, want, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap_or("").contains(field),
            "{body}: {answer}"
        );
    }
    let (code, _) = send(
        &client,
        "GET",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        &json!({}),
    )
    .await;
    assert_eq!(code, 405);
    // The reader may not ask about others.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(server.data_dir.join("server/tls/server-ca.crt"))
        .args([
            "-H",
            &format!("Authorization: Bearer {}", token_of(&reader)),
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &sar.to_string(),
        ])
        .arg(format!(
            "https://{}:6443/apis/authorization.k8s.io/v1/subjectaccessreviews",
            server.ip
        ))
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "{}",
        text(&out)
    );
}

/// The bearer token in a kubeconfig written by `token_kubeconfig`.
fn token_of(kubeconfig: &Path) -> String {
    let doc: Value = serde_json::from_slice(&std::fs::read(kubeconfig).unwrap()).unwrap();
    doc["users"][0]["user"]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Where the install script puts helm.
const HELM: &str = "/usr/local/lib/rke2-test/helm";

/// A chart carrying a ServiceAccount, Role, RoleBinding, ClusterRole and
/// ClusterRoleBinding installs, upgrades (a rule added) and uninstalls
/// with the real helm, and its account then holds what the chart grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart_with_rbac_installs_upgrades_uninstalls() {
    assert!(
        Path::new(HELM).exists(),
        "{HELM} missing: run `bash scripts/install.sh`"
    );
    let (server, client) = start_server().await;
    let chart = server.dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: rbac-demo\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "writeConfigMaps: false\n").unwrap();
    std::fs::write(
        chart.join("templates/rbac.yaml"),
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .Release.Name }}-sa
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .Release.Name }}-role
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list"{{ if .Values.writeConfigMaps }}, "create"{{ end }}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .Release.Name }}-binding
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .Release.Name }}-role
subjects:
- kind: ServiceAccount
  name: {{ .Release.Name }}-sa
  namespace: {{ .Release.Namespace }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .Release.Name }}-nodes
rules:
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .Release.Name }}-nodes
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .Release.Name }}-nodes
subjects:
- kind: ServiceAccount
  name: {{ .Release.Name }}-sa
  namespace: {{ .Release.Namespace }}
"#,
    )
    .unwrap();
    let helm = |args: &[&str]| {
        let o = std::process::Command::new(HELM)
            .args(args)
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .env("HELM_CACHE_HOME", server.dir.path().join("helm-cache"))
            .env("HELM_CONFIG_HOME", server.dir.path().join("helm-config"))
            .env("HELM_DATA_HOME", server.dir.path().join("helm-data"))
            .output()
            .expect("helm runs");
        assert!(o.status.success(), "helm {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let chart_dir = chart.to_str().unwrap();
    helm(&[
        "install",
        "demo",
        chart_dir,
        "-n",
        "apps",
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
    ]);
    let sa = token_kubeconfig(&server, &client, "apps", "demo-sa").await;
    let k = kubectls().unwrap().pop().unwrap().1;
    let o = kubectl(&k, &sa, &["-n", "apps", "get", "configmaps"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = kubectl(&k, &sa, &["get", "nodes"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = kubectl(&k, &sa, &["-n", "apps", "create", "configmap", "x"]);
    assert!(!o.status.success(), "create allowed before the upgrade");

    helm(&[
        "upgrade",
        "demo",
        chart_dir,
        "-n",
        "apps",
        "--set",
        "writeConfigMaps=true",
        "--wait",
        "--timeout",
        "120s",
    ]);
    let o = kubectl(&k, &sa, &["-n", "apps", "create", "configmap", "x"]);
    assert!(o.status.success(), "after the upgrade: {}", text(&o));
    let list = helm(&["list", "-n", "apps", "-o", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["revision"], json!("2"), "{list}");

    helm(&[
        "uninstall",
        "demo",
        "-n",
        "apps",
        "--wait",
        "--timeout",
        "120s",
    ]);
    for (path, name) in [
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/roles",
            "demo-role",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings",
            "demo-binding",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            "demo-nodes",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "demo-nodes",
        ),
        ("/api/v1/namespaces/apps/serviceaccounts", "demo-sa"),
    ] {
        let (code, answer) = send(&client, "GET", &format!("{path}/{name}"), &Value::Null).await;
        assert_eq!(code, 404, "{path}/{name} left after uninstall: {answer}");
    }
    let o = kubectl(&k, &sa, &["-n", "apps", "get", "configmaps"]);
    assert!(
        !o.status.success(),
        "the account's token outlived its account"
    );
}
