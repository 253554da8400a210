//! Bodies captured from real kubectl 1.32.4 and 1.37.1 (`testdata/capture.py`).
//! Both versions send byte-identical protobuf for these commands; `kubectl run`
//! sends JSON (`testdata/k13x-pod.json`), so it has no protobuf vector.

use serde_json::{Value, json};

fn decode_capture(name: &str) -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
    let mut out = None;
    for v in ["k132", "k137"] {
        let body = std::fs::read(format!("{dir}/{v}-{name}.pb")).unwrap();
        assert!(body.starts_with(rke2_kubeproto::MAGIC));
        let got = rke2_kubeproto::decode(&body).unwrap_or_else(|e| panic!("{v}-{name}: {e}"));
        if let Some(prev) = &out {
            assert_eq!(prev, &got, "{name}: kubectl versions differ");
        }
        out = Some(got);
    }
    out.unwrap()
}

#[test]
fn configmap() {
    // kubectl create configmap c1 --from-literal=a=b --from-literal=k2=v2
    assert_eq!(
        decode_capture("configmap"),
        json!({"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c1","namespace":"default"},
               "data":{"a":"b","k2":"v2"}})
    );
}

#[test]
fn secret() {
    // kubectl create secret generic s1 --from-literal=p=q
    assert_eq!(
        decode_capture("secret"),
        json!({"kind":"Secret","apiVersion":"v1","metadata":{"name":"s1","namespace":"default"},
               "data":{"p":"cQ=="}})
    );
}

#[test]
fn deployment() {
    // kubectl create deployment web --image=busybox --replicas=2 --port=80
    assert_eq!(
        decode_capture("deployment"),
        json!({"kind":"Deployment","apiVersion":"apps/v1",
               "metadata":{"name":"web","namespace":"default","labels":{"app":"web"}},
               "spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},
                       "template":{"metadata":{"labels":{"app":"web"}},
                                   "spec":{"containers":[{"name":"busybox","image":"busybox",
                                                          "ports":[{"containerPort":80}],"resources":{}}]}},
                       "strategy":{}},
               "status":{}})
    );
}

#[test]
fn namespace() {
    assert_eq!(
        decode_capture("namespace"),
        json!({"kind":"Namespace","apiVersion":"v1","metadata":{"name":"n1"},"spec":{},"status":{}})
    );
}

#[test]
fn service() {
    // kubectl create service clusterip svc1 --tcp=80:8080
    assert_eq!(
        decode_capture("service"),
        json!({"kind":"Service","apiVersion":"v1",
               "metadata":{"name":"svc1","namespace":"default","labels":{"app":"svc1"}},
               "spec":{"ports":[{"name":"80-8080","protocol":"TCP","port":80,"targetPort":8080}],
                       "selector":{"app":"svc1"},"type":"ClusterIP"},
               "status":{"loadBalancer":{}}})
    );
}

#[test]
fn serviceaccount() {
    assert_eq!(
        decode_capture("serviceaccount"),
        json!({"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"sa1","namespace":"default"}})
    );
}

#[test]
fn job() {
    // kubectl create job j1 --image=busybox
    assert_eq!(
        decode_capture("job"),
        json!({"kind":"Job","apiVersion":"batch/v1","metadata":{"name":"j1","namespace":"default"},
               "spec":{"template":{"metadata":{},"spec":{"containers":[{"name":"j1","image":"busybox","resources":{}}],
                                                         "restartPolicy":"Never"}}},
               "status":{}})
    );
}

#[test]
fn cronjob() {
    let v = decode_capture("cronjob");
    assert_eq!(v["kind"], "CronJob");
    assert_eq!(v["apiVersion"], "batch/v1");
    assert_eq!(v["spec"]["schedule"], "*/5 * * * *");
    assert_eq!(v["spec"]["jobTemplate"]["metadata"]["name"], "cj1");
    let pod = &v["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "OnFailure");
    assert_eq!(
        pod["containers"][0],
        json!({"name":"cj1","image":"busybox","resources":{}})
    );
}

#[test]
fn rbac() {
    assert_eq!(
        decode_capture("role"),
        json!({"kind":"Role","apiVersion":"rbac.authorization.k8s.io/v1",
               "metadata":{"name":"r1","namespace":"default"},
               "rules":[{"verbs":["get","list"],"apiGroups":[""],"resources":["pods"]}]})
    );
    assert_eq!(
        decode_capture("clusterrole"),
        json!({"kind":"ClusterRole","apiVersion":"rbac.authorization.k8s.io/v1","metadata":{"name":"cr1"},
               "rules":[{"verbs":["get"],"apiGroups":[""],"resources":["nodes"]}]})
    );
    assert_eq!(
        decode_capture("rolebinding"),
        json!({"kind":"RoleBinding","apiVersion":"rbac.authorization.k8s.io/v1",
               "metadata":{"name":"rb1","namespace":"default"},
               "subjects":[{"kind":"User","apiGroup":"rbac.authorization.k8s.io","name":"alice"}],
               "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"r1"}})
    );
}

#[test]
fn pdb_priorityclass_quota_ingress() {
    let v = decode_capture("pdb");
    assert_eq!(
        v["spec"],
        json!({"minAvailable":1,"selector":{"matchLabels":{"app":"web"}}})
    );
    let v = decode_capture("priorityclass");
    assert_eq!(
        v,
        json!({"kind":"PriorityClass","apiVersion":"scheduling.k8s.io/v1","metadata":{"name":"pc1"},
               "value":1000,"preemptionPolicy":"PreemptLowerPriority"})
    );
    let v = decode_capture("quota");
    assert_eq!(v["spec"], json!({"hard":{"cpu":"1","pods":"2"}}));
    let v = decode_capture("ingress");
    assert_eq!(
        v["spec"],
        json!({"rules":[{"host":"foo.com","http":{"paths":[{"path":"/bar","pathType":"Exact",
               "backend":{"service":{"name":"svc1","port":{"number":80}}}}]}}]})
    );
}

#[test]
fn kubectl_run_sends_json() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
    for v in ["k132", "k137"] {
        let body = std::fs::read(format!("{dir}/{v}-pod.json")).unwrap();
        let pod: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(pod["kind"], "Pod");
        assert!(rke2_kubeproto::decode(&body).is_err());
    }
}
