//! Admission webhooks against the real binary and real kubectl: a webhook
//! server (tests/py/webhook.py, Debian's python3) runs as a real process
//! over TLS with a certificate from a CA made here, reached at a `url` on
//! loopback. Covered: a mutating webhook adding a label (JSONPatch), the
//! AdmissionReview it receives (operation, userInfo, dryRun, the
//! apiserver's client certificate), a validating webhook denying with its
//! message as kubectl prints it and warning otherwise, `failurePolicy:
//! Ignore` letting requests through when the server is down or answers
//! garbage, `Fail` refusing them with upstream's messages (connection
//! refused, timeout, garbage, wrong uid), matchConditions (CEL),
//! dry-run, and validation of the configurations themselves; then
//! ValidatingAdmissionPolicies with Deny and Warn bindings, variables,
//! messages and a ConfigMap as `params`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rke2_testbed::{Server, ServerOpts, kubectls};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// The webhook server process; killed when dropped.
struct WebhookServer {
    child: Child,
    port: u16,
    log: PathBuf,
    ca_pem: String,
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WebhookServer {
    fn start(dir: &Path, client_ca: &Path, port: u16) -> WebhookServer {
        let ca = rke2_trust::CertAuthority::ensure(
            &dir.join("webhook-ca.crt"),
            &dir.join("webhook-ca.key"),
            "webhook-ca",
        )
        .expect("webhook CA");
        let (cert, key) = ca
            .issue(&rke2_trust::LeafSpec::server(
                "webhook",
                vec!["127.0.0.1".into(), "localhost".into()],
            ))
            .expect("webhook serving certificate");
        std::fs::write(dir.join("webhook.crt"), cert).unwrap();
        std::fs::write(dir.join("webhook.key"), key).unwrap();
        let log = dir.join("webhook.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/webhook.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir.join("webhook.crt"))
            .arg(dir.join("webhook.key"))
            .arg(client_ca)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the webhook server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("webhook server says it is ready");
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("webhook server did not start: {line:?}"));
        WebhookServer {
            child,
            port,
            log,
            ca_pem: ca.cert_pem.clone(),
        }
    }

    /// The AdmissionReviews received at `path`, with the client's CN.
    fn reviews(&self, path: &str) -> Vec<(String, Value)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["path"].as_str().unwrap_or("").starts_with(path))
            .map(|v| {
                (
                    v["cn"].as_str().unwrap_or("").to_string(),
                    v["review"].clone(),
                )
            })
            .collect()
    }
}

struct Kubectl<'a> {
    server: &'a Server,
    bin: PathBuf,
    dir: PathBuf,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.server
            .kubectl(&self.bin)
            .env("HOME", &self.dir)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    fn apply(&self, file: &str, manifest: &str) -> Output {
        let path = self.dir.join(file);
        std::fs::write(&path, manifest).unwrap();
        self.run(&["apply", "-f", path.to_str().unwrap()])
    }

    fn create(&self, file: &str, manifest: &str, extra: &[&str]) -> Output {
        let path = self.dir.join(file);
        std::fs::write(&path, manifest).unwrap();
        let mut args = vec!["create", "-f", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn ok(what: &str, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{what} failed: {stderr}");
    stderr
}

fn refused(what: &str, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{what} succeeded: {stderr}");
    stderr
}

fn configmap(name: &str, scenario: Option<&str>) -> String {
    let labels = scenario
        .map(|s| format!("\n  labels:\n    scenario: {s}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default{labels}\ndata:\n  k: v\n"
    )
}

/// One webhook configuration of `kind` holding one webhook for
/// ConfigMaps; `selector` is its objectSelector (flow YAML).
fn webhook_config(
    kind: &str,
    name: &str,
    url: &str,
    ca: &str,
    failure: &str,
    timeout: u32,
    selector: &str,
) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\nwebhooks:\n- name: {name}.example.com\n  admissionReviewVersions: [v1]\n  sideEffects: None\n  failurePolicy: {failure}\n  timeoutSeconds: {timeout}\n  objectSelector: {selector}\n  clientConfig:\n    url: {url}\n    caBundle: {ca}\n  rules:\n  - operations: [CREATE, UPDATE, DELETE]\n    apiGroups: ['']\n    apiVersions: [v1]\n    resources: [configmaps]\n"
    )
}

fn scenario(s: &str) -> String {
    format!("{{matchLabels: {{scenario: {s}}}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_mutate_deny_and_fail_as_configured() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(bin(), ServerOpts::default()).expect("starting rke2 server");
    server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    let client_ca = server.data_dir.join("server/tls/client-ca.crt");
    let mut hooks = WebhookServer::start(server.dir.path(), &client_ca, 0);
    let ca = base64::engine::general_purpose::STANDARD.encode(&hooks.ca_pem);
    let base = format!("https://127.0.0.1:{}", hooks.port);
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("https://127.0.0.1:{closed}/down");

    let (_, kbin) = kubectls().expect("kubectl binaries").pop().unwrap();
    let dir = server.dir.path().join("kubectl");
    std::fs::create_dir_all(&dir).unwrap();
    let k = Kubectl {
        server: &server,
        bin: kbin,
        dir,
    };

    // The configurations themselves are validated as upstream.
    let bad = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: bad\nwebhooks:\n- name: bad\n  admissionReviewVersions: [v1]\n  sideEffects: Some\n  timeoutSeconds: 31\n  clientConfig:\n    url: http://127.0.0.1/x\n";
    let err = refused("an invalid configuration", &k.apply("bad.yaml", bad));
    for want in [
        r#"webhooks[0].name: Invalid value: "bad": should be a domain with at least three segments separated by dots"#,
        r#"webhooks[0].sideEffects: Unsupported value: "Some": supported values: "None", "NoneOnDryRun""#,
        "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
        r#"webhooks[0].clientConfig.url: Invalid value: "http://127.0.0.1/x": 'https' is the only allowed URL scheme"#,
    ] {
        assert!(err.contains(want), "{want}\nnot in: {err}");
    }

    // Mutating: objects without a scenario label get admitted-by=webhook.
    let no_scenario = "{matchExpressions: [{key: scenario, operator: DoesNotExist}]}";
    ok(
        "mutating configuration",
        &k.apply(
            "mutate.yaml",
            &webhook_config(
                "MutatingWebhookConfiguration",
                "mutate",
                &format!("{base}/mutate"),
                &ca,
                "Fail",
                10,
                no_scenario,
            ),
        ),
    );
    // Validating: names starting with bad- are denied.
    ok(
        "validating configuration",
        &k.apply(
            "deny.yaml",
            &webhook_config(
                "ValidatingWebhookConfiguration",
                "deny",
                &format!("{base}/deny"),
                &ca,
                "Fail",
                10,
                no_scenario,
            ),
        ),
    );
    let listed = k.run(&[
        "get",
        "mutatingwebhookconfigurations,validatingwebhookconfigurations",
        "-o",
        "name",
    ]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/mutate"),
        "{listed}"
    );
    assert!(
        listed.contains("validatingwebhookconfiguration.admissionregistration.k8s.io/deny"),
        "{listed}"
    );

    let warned = ok(
        "create m1",
        &k.create("m1.yaml", &configmap("m1", None), &[]),
    );
    assert!(
        warned.contains("Warning: checked by the deny webhook"),
        "{warned}"
    );
    let label = k.run(&[
        "get",
        "configmap",
        "m1",
        "-o",
        "jsonpath={.metadata.labels.admitted-by}",
    ]);
    assert_eq!(String::from_utf8_lossy(&label.stdout), "webhook");
    let seen = hooks.reviews("/mutate");
    let (cn, review) = seen
        .iter()
        .find(|(_, r)| r["request"]["object"]["metadata"]["name"] == "m1")
        .expect("the mutating webhook saw m1");
    assert_eq!(
        cn, "system:apiserver",
        "the apiserver presents its client certificate"
    );
    let req = &review["request"];
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(req["namespace"], "default");
    assert_eq!(req["resource"]["resource"], "configmaps");
    assert_eq!(req["kind"]["kind"], "ConfigMap");
    assert_eq!(req["dryRun"], false);
    assert_eq!(req["options"]["kind"], "CreateOptions");
    assert!(
        req["userInfo"]["username"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    // The validating webhook sees the mutated object.
    let validated = hooks.reviews("/deny");
    assert!(validated.iter().any(|(_, r)| {
        r["request"]["object"]["metadata"]["name"] == "m1"
            && r["request"]["object"]["metadata"]["labels"]["admitted-by"] == "webhook"
    }));

    // An update keeps going through both.
    ok("label m1", &k.run(&["label", "configmap", "m1", "extra=1"]));
    assert!(hooks.reviews("/mutate").iter().any(|(_, r)| {
        r["request"]["operation"] == "UPDATE"
            && r["request"]["oldObject"]["metadata"]["name"] == "m1"
    }));

    let err = refused(
        "create bad-one",
        &k.create("bad.yaml", &configmap("bad-one", None), &[]),
    );
    assert!(
        err.contains(r#"admission webhook "deny.example.com" denied the request: names starting with bad- are not welcome here"#),
        "{err}"
    );
    assert!(
        err.contains("(Forbidden)"),
        "the webhook's reason is kept: {err}"
    );
    let gone = k.run(&["get", "configmap", "bad-one"]);
    assert!(!gone.status.success(), "a denied object is not stored");

    // matchConditions (CEL): the webhook is only called when they hold;
    // one that cannot be evaluated refuses the request under Fail.
    let cel = webhook_config(
        "ValidatingWebhookConfiguration",
        "cel",
        &format!("{base}/deny"),
        &ca,
        "Fail",
        10,
        &scenario("cel"),
    ) + "  matchConditions:\n  - name: not-skipped\n    expression: \"!object.metadata.name.endsWith('-skip')\"\n  - name: has-k\n    expression: \"object.data.k == 'v'\"\n";
    ok("matchConditions configuration", &k.apply("cel.yaml", &cel));
    ok(
        "a skipped webhook is not called",
        &k.create("cel1.yaml", &configmap("bad-skip", Some("cel")), &[]),
    );
    let err = refused(
        "matchConditions hold",
        &k.create("cel2.yaml", &configmap("bad-cel", Some("cel")), &[]),
    );
    assert!(
        err.contains(r#"admission webhook "cel.example.com" denied the request"#),
        "{err}"
    );
    let no_data = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: no-data\n  namespace: default\n  labels:\n    scenario: cel\n";
    let err = refused(
        "a condition that cannot be evaluated",
        &k.create("cel3.yaml", no_data, &[]),
    );
    assert!(
        err.contains(r#"failed to evaluate match condition \"has-k\""#)
            || err.contains(r#"failed to evaluate match condition "has-k""#),
        "{err}"
    );
    assert!(err.contains("(Forbidden)"), "{err}");

    // Dry run: sideEffects None webhooks are called with dryRun true and
    // nothing is stored.
    ok(
        "dry-run create",
        &k.create(
            "dry.yaml",
            &configmap("dry-one", None),
            &["--dry-run=server"],
        ),
    );
    assert!(hooks.reviews("/mutate").iter().any(|(_, r)| {
        r["request"]["dryRun"] == true && r["request"]["object"]["metadata"]["name"] == "dry-one"
    }));
    assert!(!k.run(&["get", "configmap", "dry-one"]).status.success());

    // Failure policies, each scoped to objects with its scenario label.
    let cases: &[(&str, &str, &str, u32, &str)] = &[
        ("down-ignore", &down, "Ignore", 10, ""),
        (
            "garbage-ignore",
            &format!("{base}/garbage"),
            "Ignore",
            10,
            "",
        ),
        (
            "down-fail",
            &down,
            "Fail",
            10,
            &format!(
                r#"Internal error occurred: failed calling webhook "down-fail.example.com": failed to call webhook: Post "https://127.0.0.1:{closed}/down?timeout=10s": dial tcp 127.0.0.1:{closed}: connect: connection refused"#
            ),
        ),
        (
            "slow-fail",
            &format!("{base}/slow"),
            "Fail",
            1,
            &format!(
                r#"failed calling webhook "slow-fail.example.com": failed to call webhook: Post "{base}/slow?timeout=1s": context deadline exceeded"#
            ),
        ),
        (
            "garbage-fail",
            &format!("{base}/garbage"),
            "Fail",
            10,
            r#"failed calling webhook "garbage-fail.example.com": received invalid webhook response: "#,
        ),
        (
            "wronguid-fail",
            &format!("{base}/wronguid"),
            "Fail",
            10,
            r#"failed calling webhook "wronguid-fail.example.com": received invalid webhook response: expected response.uid="#,
        ),
    ];
    for (name, url, policy, timeout, want) in cases {
        ok(
            name,
            &k.apply(
                &format!("{name}.yaml"),
                &webhook_config(
                    "ValidatingWebhookConfiguration",
                    name,
                    url,
                    &ca,
                    policy,
                    *timeout,
                    &scenario(name),
                ),
            ),
        );
        let started = Instant::now();
        let out = k.create(
            &format!("cm-{name}.yaml"),
            &configmap(&format!("cm-{name}"), Some(name)),
            &[],
        );
        if want.is_empty() {
            ok(name, &out);
        } else {
            let err = refused(name, &out);
            assert!(err.contains(want), "{name}: {want}\nnot in: {err}");
            assert!(err.contains("(InternalError)"), "{name}: {err}");
        }
        if *timeout == 1 {
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "the timeout bounds the call"
            );
        }
    }

    // The webhook server restarts: the apiserver's kept connection is
    // dead, and the call goes again on a new one.
    let port = hooks.port;
    drop(hooks);
    hooks = WebhookServer::start(server.dir.path(), &client_ca, port);
    ok(
        "create after a webhook restart",
        &k.create("m2.yaml", &configmap("m2", None), &[]),
    );
    let label = k.run(&[
        "get",
        "configmap",
        "m2",
        "-o",
        "jsonpath={.metadata.labels.admitted-by}",
    ]);
    assert_eq!(String::from_utf8_lossy(&label.stdout), "webhook");

    // Delete goes through validating webhooks too: a denied delete keeps
    // the object.
    ok("delete m1", &k.run(&["delete", "configmap", "m1"]));
    assert!(hooks.reviews("/deny").iter().any(|(_, r)| {
        r["request"]["operation"] == "DELETE"
            && r["request"]["oldObject"]["metadata"]["name"] == "m1"
    }));
    ok(
        "the webhook configurations can always be deleted",
        &k.run(&["delete", "validatingwebhookconfigurations", "down-fail"]),
    );
    ok(
        "then the object passes",
        &k.create("again.yaml", &configmap("cm-again", Some("down-fail")), &[]),
    );
}

/// Dry-run creates `manifest` until the server refuses it (a policy just
/// applied is in effect once the apiserver's cache has it); answers the
/// refusal.
fn until_refused(k: &Kubectl<'_>, file: &str, manifest: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = k.create(file, manifest, &["--dry-run=server"]);
        if !out.status.success() {
            return String::from_utf8_lossy(&out.stderr).to_string();
        }
        assert!(Instant::now() < deadline, "{file} was never refused");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn binding(
    name: &str,
    policy: &str,
    actions: &str,
    scenario_label: &str,
    param_ref: &str,
) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: {name}\nspec:\n  policyName: {policy}\n  validationActions: {actions}\n  matchResources:\n    objectSelector: {{matchLabels: {{scenario: {scenario_label}}}}}\n{param_ref}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_admission_policies_deny_warn_and_take_params() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(bin(), ServerOpts::default()).expect("starting rke2 server");
    server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    let (_, kbin) = kubectls().expect("kubectl binaries").pop().unwrap();
    let dir = server.dir.path().join("kubectl");
    std::fs::create_dir_all(&dir).unwrap();
    let k = Kubectl {
        server: &server,
        bin: kbin,
        dir,
    };

    // A policy that does not compile is refused with the field named.
    let broken = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: broken\nspec:\n  matchConstraints:\n    resourceRules: [{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}]\n  validations:\n  - expression: 'object.data.size() <'\n";
    let err = refused(
        "a policy that does not compile",
        &k.apply("broken.yaml", broken),
    );
    assert!(
        err.contains("spec.validations[0].expression: Invalid value: \"object.data.size() <\": compilation failed"),
        "{err}"
    );

    let max_keys = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: max-keys\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules: [{operations: [CREATE, UPDATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}]\n  variables:\n  - name: keys\n    expression: 'has(object.data) ? size(object.data) : 0'\n  validations:\n  - expression: 'variables.keys <= 1'\n    message: at most one key, please\n    reason: Forbidden\n";
    ok("max-keys policy", &k.apply("max-keys.yaml", max_keys));
    ok(
        "deny binding",
        &k.apply(
            "b1.yaml",
            &binding("max-keys-deny", "max-keys", "[Deny]", "deny", ""),
        ),
    );
    ok(
        "warn binding",
        &k.apply(
            "b2.yaml",
            &binding("max-keys-warn", "max-keys", "[Warn, Audit]", "warn", ""),
        ),
    );
    let two_keys = |name: &str, s: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{scenario: {s}}}\ndata: {{a: '1', b: '2'}}\n"
        )
    };
    let err = until_refused(&k, "deny.yaml", &two_keys("two-deny", "deny"));
    assert!(
        err.contains("ValidatingAdmissionPolicy 'max-keys' with binding 'max-keys-deny' denied request: at most one key, please"),
        "{err}"
    );
    assert!(err.contains("(Forbidden)"), "{err}");
    ok(
        "one key passes",
        &k.create("one.yaml", &configmap("one-deny", Some("deny")), &[]),
    );
    // Warn: stored, and kubectl prints the warning. The binding may not be
    // in effect yet on the first try.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        let out = k.create(
            &format!("warn{n}.yaml"),
            &two_keys(&format!("two-warn-{n}"), "warn"),
            &[],
        );
        let stderr = ok("a warned create", &out);
        if stderr.contains("Warning: Validation failed for ValidatingAdmissionPolicy 'max-keys' with binding 'max-keys-warn': at most one key, please") {
            break;
        }
        assert!(Instant::now() < deadline, "no warning: {stderr}");
        n += 1;
    }
    // An update is checked too.
    let err = refused(
        "an update past the limit",
        &k.run(&[
            "patch",
            "configmap",
            "one-deny",
            "--type=merge",
            "-p",
            r#"{"data":{"c":"3"}}"#,
        ]),
    );
    assert!(
        err.contains("denied request: at most one key, please"),
        "{err}"
    );

    // paramKind: a ConfigMap holds the prefix every name must start with.
    let prefix = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: name-prefix\nspec:\n  paramKind: {apiVersion: v1, kind: ConfigMap}\n  matchConstraints:\n    resourceRules: [{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}]\n  validations:\n  - expression: 'object.metadata.name.startsWith(params.data.prefix)'\n    messageExpression: \"'name must start with ' + params.data.prefix\"\n";
    ok("name-prefix policy", &k.apply("prefix.yaml", prefix));
    ok(
        "param binding",
        &k.apply(
            "b3.yaml",
            &binding(
                "name-prefix-deny",
                "name-prefix",
                "[Deny]",
                "param",
                "  paramRef:\n    name: prefix-params\n    namespace: default\n    parameterNotFoundAction: Deny\n",
            ),
        ),
    );
    let err = until_refused(&k, "p1.yaml", &configmap("ok-1", Some("param")));
    assert!(
        err.contains("ValidatingAdmissionPolicy 'name-prefix' with binding 'name-prefix-deny' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{err}"
    );
    ok(
        "params",
        &k.run(&[
            "create",
            "configmap",
            "prefix-params",
            "-n",
            "default",
            "--from-literal=prefix=ok-",
        ]),
    );
    let err = until_refused(&k, "p2.yaml", &configmap("nope", Some("param")));
    assert!(
        err.contains("ValidatingAdmissionPolicy 'name-prefix' with binding 'name-prefix-deny' denied request: name must start with ok-"),
        "{err}"
    );
    ok(
        "a name with the prefix",
        &k.create("p3.yaml", &configmap("ok-1", Some("param")), &[]),
    );
}

/// A webhook served by a pod and reached through its Service: the
/// apiserver resolves the Service to the pod's EndpointSlice address
/// itself and verifies the certificate for `webhook.default.svc`. The
/// pod runs Debian's python3 from the host (hostPath mounts of /usr and
/// the loader) in the test busybox image. Needs root, containerd and the
/// network-namespace bed: run under `flock /work/netbed.lock`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_in_a_pod_is_reached_through_its_service() {
    use rke2_testbed::netbed::{NetBed, NodeProc};
    use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
    const LONG: Duration = Duration::from_secs(180);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: admission-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
    s1.start(&bed).unwrap();
    let kc_path = s1.dir.join("rke2.yaml");
    eventually(LONG, "server kubeconfig", || async {
        kc_path.exists().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let kubeconfig = s1.kubeconfig_at_ip().unwrap();
    let (_, kbin) = kubectls().expect("kubectl binaries").pop().unwrap();
    let kubectl = |args: &[&str]| -> Output {
        Command::new(&kbin)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    };
    eventually(LONG, "API ready", || async {
        kubectl(&["get", "--raw", "/readyz"])
            .status
            .success()
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));

    // The webhook's files: script, certificate for the Service's DNS name.
    let w = s1.dir.join("webhook");
    std::fs::create_dir_all(&w).unwrap();
    let ca = rke2_trust::CertAuthority::ensure(&w.join("ca.crt"), &w.join("ca.key"), "webhook-ca")
        .unwrap();
    let (cert, key) = ca
        .issue(&rke2_trust::LeafSpec::server(
            "webhook",
            vec!["webhook.default.svc".into()],
        ))
        .unwrap();
    std::fs::write(w.join("webhook.crt"), cert).unwrap();
    std::fs::write(w.join("webhook.key"), key).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/webhook.py"),
        w.join("webhook.py"),
    )
    .unwrap();
    std::fs::copy(
        s1.data_dir().join("server/tls/client-ca.crt"),
        w.join("client-ca.crt"),
    )
    .unwrap();
    let wd = w.display().to_string();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: webhook
  namespace: default
  labels: {{app: webhook}}
spec:
  containers:
  - name: webhook
    image: {TEST_BUSYBOX_IMAGE}
    env: [{{name: WEBHOOK_BIND, value: 0.0.0.0}}]
    command: [/usr/bin/python3, /w/webhook.py, "8443", /w/webhook.crt, /w/webhook.key, /w/client-ca.crt, /w/webhook.log]
    ports: [{{containerPort: 8443, name: https}}]
    readinessProbe: {{tcpSocket: {{port: 8443}}, periodSeconds: 1}}
    volumeMounts:
    - {{name: usr, mountPath: /usr, readOnly: true}}
    - {{name: lib64, mountPath: /lib64, readOnly: true}}
    - {{name: lib, mountPath: /lib, readOnly: true}}
    - {{name: ldcache, mountPath: /etc/ld.so.cache, readOnly: true}}
    - {{name: w, mountPath: /w}}
  volumes:
  - {{name: usr, hostPath: {{path: /usr}}}}
  - {{name: lib64, hostPath: {{path: /usr/lib64}}}}
  - {{name: lib, hostPath: {{path: /usr/lib}}}}
  - {{name: ldcache, hostPath: {{path: /etc/ld.so.cache, type: File}}}}
  - {{name: w, hostPath: {{path: {wd}}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: webhook
  namespace: default
spec:
  selector: {{app: webhook}}
  ports: [{{name: https, port: 443, targetPort: https}}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: in-pod
webhooks:
- name: in-pod.example.com
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  objectSelector: {{matchLabels: {{scenario: in-pod}}}}
  clientConfig:
    service: {{namespace: default, name: webhook, path: /mutate}}
    caBundle: {}
  rules:
  - {{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}
"#,
        base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem)
    );
    std::fs::write(w.join("all.yaml"), manifest).unwrap();
    let out = kubectl(&["apply", "-f", w.join("all.yaml").to_str().unwrap()]);
    ok("pod, service, configuration", &out);
    std::fs::write(
        w.join("cm.yaml"),
        configmap("through-service", Some("in-pod")),
    )
    .unwrap();
    // Until the pod is Ready the Service has no ready endpoint and the
    // create is refused (failurePolicy Fail); then it is mutated.
    let mut last = String::new();
    let created = eventually(LONG, "a create mutated by the in-pod webhook", || {
        let out = kubectl(&["create", "-f", w.join("cm.yaml").to_str().unwrap()]);
        last = String::from_utf8_lossy(&out.stderr).to_string();
        async move { out.status.success().then_some(()) }
    })
    .await;
    created.unwrap_or_else(|e| panic!("{e}: {last}\n{}", s1.log()));
    let label = kubectl(&[
        "get",
        "configmap",
        "through-service",
        "-o",
        "jsonpath={.metadata.labels.admitted-by}",
    ]);
    assert_eq!(String::from_utf8_lossy(&label.stdout), "webhook");
    let log = std::fs::read_to_string(w.join("webhook.log")).unwrap_or_default();
    assert!(
        log.contains("\"cn\": \"system:apiserver\""),
        "client certificate seen: {log}"
    );
    // Deleting the pod leaves the Service without endpoints: refused with
    // upstream's wording.
    ok(
        "delete pod",
        &kubectl(&["delete", "pod", "webhook", "--grace-period=0", "--force"]),
    );
    std::fs::write(
        w.join("cm2.yaml"),
        configmap("no-endpoints", Some("in-pod")),
    )
    .unwrap();
    let mut last = String::new();
    let refused_now = eventually(LONG, "refused without endpoints", || {
        let out = kubectl(&[
            "create",
            "-f",
            w.join("cm2.yaml").to_str().unwrap(),
            "--dry-run=server",
        ]);
        last = String::from_utf8_lossy(&out.stderr).to_string();
        let done = !out.status.success() && last.contains("no endpoints available for service");
        async move { done.then_some(()) }
    })
    .await;
    refused_now.unwrap_or_else(|e| panic!("{e}: {last}"));
    assert!(
        last.contains(r#"failed calling webhook "in-pod.example.com": failed to call webhook: Post "https://webhook.default.svc:443/mutate?timeout=10s""#),
        "{last}"
    );
    s1.kill9();
}

/// The standard output of a command that must succeed.
fn stdout_ok(what: &str, out: &Output) -> String {
    ok(what, out);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A two-version CRD whose conversion webhook is served at `path`.
fn converted_crd(base: &str, path: &str, ca: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.conv.example.com
spec:
  group: conv.example.com
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  conversion:
    strategy: Webhook
    webhook:
      conversionReviewVersions: [v1]
      clientConfig:
        url: {base}{path}
        caBundle: {ca}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, properties: {{hostPort: {{type: string}}}}}}
  - name: v2
    served: true
    storage: false
    additionalPrinterColumns:
    - {{name: Port, type: integer, jsonPath: .spec.port}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              host: {{type: string}}
              port: {{type: integer, minimum: 1}}
"#
    )
}

/// Webhook conversion of a CRD with two versions: objects are stored in
/// the storage version whatever version they are written in, served in
/// the version asked for (get, list in one review, watch, patch, the
/// printer columns of the version), and a failing webhook fails the
/// requests that need it with upstream's message while the storage
/// version stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversion_webhook_serves_every_version() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(bin(), ServerOpts::default()).expect("starting rke2 server");
    server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    let client_ca = server.data_dir.join("server/tls/client-ca.crt");
    let hooks = WebhookServer::start(server.dir.path(), &client_ca, 0);
    let ca = base64::engine::general_purpose::STANDARD.encode(&hooks.ca_pem);
    let base = format!("https://127.0.0.1:{}", hooks.port);
    let all = kubectls().expect("kubectl binaries");
    let dir = server.dir.path().join("kubectl");
    std::fs::create_dir_all(&dir).unwrap();
    let k = Kubectl {
        server: &server,
        bin: all.last().unwrap().1.clone(),
        dir,
    };
    ok(
        "the CRD",
        &k.apply("crd.yaml", &converted_crd(&base, "/convert", &ca)),
    );
    ok(
        "the CRD is established",
        &k.run(&[
            "wait",
            "--for=condition=Established",
            "crd/widgets.conv.example.com",
            "--timeout=30s",
        ]),
    );
    let v2 = "apiVersion: conv.example.com/v2\nkind: Widget\nmetadata:\n  name: two\nspec:\n  host: example.org\n  port: 8080\n";
    let v1 = "apiVersion: conv.example.com/v1\nkind: Widget\nmetadata:\n  name: one\nspec:\n  hostPort: example.net:443\n";
    ok("a v2 object", &k.create("two.yaml", v2, &[]));
    ok("a v1 object", &k.create("one.yaml", v1, &[]));
    let reviews: Vec<Value> = hooks
        .reviews("/convert")
        .into_iter()
        .map(|(cn, r)| {
            assert_eq!(cn, "system:apiserver", "the apiserver's client certificate");
            r
        })
        .collect();
    assert!(
        reviews.iter().any(
            |r| r["request"]["desiredAPIVersion"] == "conv.example.com/v1"
                && r["request"]["objects"][0]["spec"]["port"] == 8080
        ),
        "the v2 object went to the webhook for the storage version: {reviews:?}"
    );

    // Each version serves both objects in its own shape.
    let get = |version: &str, name: &str| -> Value {
        let out = k.run(&[
            "get",
            "--raw",
            &format!("/apis/conv.example.com/{version}/namespaces/default/widgets/{name}"),
        ]);
        serde_json::from_str(&stdout_ok(&format!("get {name} as {version}"), &out)).unwrap()
    };
    assert_eq!(
        get("v1", "two")["spec"],
        serde_json::json!({"hostPort": "example.org:8080"})
    );
    assert_eq!(get("v1", "two")["apiVersion"], "conv.example.com/v1");
    assert_eq!(
        get("v2", "one")["spec"],
        serde_json::json!({"host": "example.net", "port": 443})
    );
    assert_eq!(get("v2", "one")["apiVersion"], "conv.example.com/v2");

    // A list of v2 converts both stored objects in one review; every
    // kubectl prints the v2 printer column from the converted objects.
    let before = hooks.reviews("/convert").len();
    let list: Value = serde_json::from_str(&stdout_ok(
        "list v2",
        &k.run(&[
            "get",
            "--raw",
            "/apis/conv.example.com/v2/namespaces/default/widgets",
        ]),
    ))
    .unwrap();
    let ports: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| &i["spec"]["port"])
        .collect();
    assert_eq!(ports, [&serde_json::json!(443), &serde_json::json!(8080)]);
    let batch = &hooks.reviews("/convert")[before..];
    assert_eq!(batch.len(), 1, "one review for the list: {batch:?}");
    assert_eq!(
        batch[0].1["request"]["objects"].as_array().map(Vec::len),
        Some(2)
    );
    for (version, bin) in &all {
        let out = k
            .server
            .kubectl(bin)
            .env("HOME", &k.dir)
            .args(["get", "widgets.v2.conv.example.com"])
            .output()
            .unwrap();
        let text = stdout_ok(&format!("kubectl {version} get widgets (v2)"), &out);
        assert!(text.lines().next().unwrap_or("").contains("PORT"), "{text}");
        assert!(
            text.contains("8080") && text.contains("443"),
            "kubectl {version}: {text}"
        );
    }

    // A merge patch through v2 lands in storage as v1; a watch of v2 from
    // before the patch sees it converted.
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        "patch through v2",
        &k.run(&[
            "patch",
            "widgets.v2.conv.example.com",
            "two",
            "--type=merge",
            "-p",
            r#"{"spec":{"port":9090}}"#,
        ]),
    );
    assert_eq!(
        get("v1", "two")["spec"],
        serde_json::json!({"hostPort": "example.org:9090"})
    );
    let watched = stdout_ok(
        "watch v2",
        &k.run(&[
            "get",
            "--raw",
            &format!(
                "/apis/conv.example.com/v2/namespaces/default/widgets?watch=1&resourceVersion={rv}&timeoutSeconds=2"
            ),
        ]),
    );
    let events: Vec<Value> = watched
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events.iter().any(|e| e["type"] == "MODIFIED"
            && e["object"]["apiVersion"] == "conv.example.com/v2"
            && e["object"]["spec"]["port"] == 9090),
        "{watched}"
    );
    // The v2 schema still validates what is written through v2.
    let bad = k.run(&[
        "patch",
        "widgets.v2.conv.example.com",
        "two",
        "--type=merge",
        "-p",
        r#"{"spec":{"port":0}}"#,
    ]);
    let msg = refused("port 0 through v2", &bad);
    assert!(
        msg.contains(
            "spec.port: Invalid value: 0: spec.port in body should be greater than or equal to 1"
        ),
        "{msg}"
    );

    // A webhook that refuses: reads needing it fail with its message as
    // upstream words it; the storage version needs no conversion.
    ok(
        "the CRD with a failing webhook",
        &k.apply("crd.yaml", &converted_crd(&base, "/convertfail", &ca)),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let msg = loop {
        let out = k.run(&["get", "widgets.v2.conv.example.com", "one"]);
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the failing webhook was never used"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        msg.contains("Error from server: conversion webhook for conv.example.com/v1, Kind=Widget failed: conversion refused by the test"),
        "{msg}"
    );
    assert_eq!(get("v1", "one")["spec"]["hostPort"], "example.net:443");
    let create = refused(
        "a v2 create when the webhook fails",
        &k.create("three.yaml", &v2.replace("name: two", "name: three"), &[]),
    );
    assert!(
        create.contains("conversion webhook for conv.example.com/v2, Kind=Widget failed"),
        "{create}"
    );
    assert!(
        !get_list_names(&k).contains(&"three".to_string()),
        "nothing half-created"
    );
}

/// The names of the Widgets, read in the storage version.
fn get_list_names(k: &Kubectl<'_>) -> Vec<String> {
    let out = k.run(&[
        "get",
        "--raw",
        "/apis/conv.example.com/v1/namespaces/default/widgets",
    ]);
    let list: Value = serde_json::from_str(&stdout_ok("list v1", &out)).unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}
