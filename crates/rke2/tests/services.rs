//! Services' endpoints against a real server running real pods (one host
//! of the network-namespace bed, its own containerd): the EndpointSlice
//! and Endpoints controllers follow a Deployment's pods (addresses, the
//! named target port, readiness from a real probe, scaling to zero,
//! deletion), a steady state writes nothing, every installed kubectl
//! prints `get endpoints,endpointslices`, `default/kubernetes` lists the
//! server, and bad Service and EndpointSlice input gets kube-apiserver's
//! 422 naming the field.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh); run under `flock /work/netbed.lock` where other
//! beds may run.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs the node, etcd and containerd.
const LONG: Duration = Duration::from_secs(120);

fn kubectl(k: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every endpoint of the managed slices of Service `svc`: (address,
/// ready, serving, terminating, port of the slice).
async fn slice_endpoints(
    slices: &Api<EndpointSlice>,
    svc: &str,
) -> Option<(
    Vec<EndpointSlice>,
    Vec<(String, bool, bool, bool, Option<i32>)>,
)> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .ok()?
        .items;
    let mut out = Vec::new();
    for s in &list {
        let port = s
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port);
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            out.push((
                e.addresses.first().cloned().unwrap_or_default(),
                c.ready == Some(true),
                c.serving == Some(true),
                c.terminating == Some(true),
                port,
            ));
        }
    }
    out.sort();
    Some((list, out))
}

/// (ready, not ready) addresses of Endpoints `name`, and its ports.
async fn endpoints_of(
    eps: &Api<Endpoints>,
    name: &str,
) -> Option<(BTreeSet<String>, BTreeSet<String>, BTreeSet<i32>)> {
    let ep = eps.get_opt(name).await.ok()??;
    let mut ready = BTreeSet::new();
    let mut not_ready = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for s in ep.subsets.iter().flatten() {
        ready.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
        not_ready.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
        ports.extend(s.ports.iter().flatten().map(|p| p.port));
    }
    Some((ready, not_ready, ports))
}

/// Names of the objects (but `kubernetes`, which every apiserver keeps)
/// that change in `api` during a 5 s watch from its current list.
async fn events_for<K>(api: Api<K>) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.watch(&kube::api::WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .filter_map(|e| async move {
            match e.ok()? {
                kube::api::WatchEvent::Added(o)
                | kube::api::WatchEvent::Modified(o)
                | kube::api::WatchEvent::Deleted(o) => o.meta().name.clone(),
                _ => None,
            }
        })
        .filter(|n| futures::future::ready(n != "kubernetes"))
        .collect()
        .await
}

fn api_error(r: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(e)) => *e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_follow_their_pods() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: services-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n"
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
    let client = eventually(LONG, "API client", || async {
        rke2_testbed::client_from_kubeconfig(&kubeconfig).await.ok()
    })
    .await
    .unwrap();

    // default/kubernetes: the server's own address on the secure port,
    // as Endpoints and as an EndpointSlice no controller manages.
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let me = hs.ip.to_string();
    let (ready, _, ports) = eventually(LONG, "default/kubernetes Endpoints", || async {
        endpoints_of(&eps, "kubernetes").await
    })
    .await
    .unwrap();
    assert_eq!(ready, BTreeSet::from([me.clone()]));
    assert_eq!(ports, BTreeSet::from([6443]));
    let k8s_slice = eventually(LONG, "default/kubernetes EndpointSlice", || async {
        slices.get_opt("kubernetes").await.ok().flatten()
    })
    .await
    .unwrap();
    assert_eq!(k8s_slice.address_type, "IPv4");
    assert_eq!(k8s_slice.endpoints.len(), 1);
    assert_eq!(k8s_slice.endpoints[0].addresses, std::slice::from_ref(&me));
    let port = &k8s_slice.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("https"), Some(6443))
    );
    let labels = k8s_slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("kubernetes")
    );
    assert!(
        !labels.contains_key("endpointslice.kubernetes.io/managed-by"),
        "{labels:?}"
    );

    // Bad input: upstream's 422s, naming the field.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = |v: serde_json::Value| -> Service { serde_json::from_value(v).unwrap() };
    let pp = PostParams::default();
    let e = api_error(
        services
            .create(
                &pp,
                &svc(
                    json!({"metadata": {"name": "bad-port"}, "spec": {"selector": {"app": "x"},
                "ports": [{"name": "Web_1", "port": 80}]}}),
                ),
            )
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{e:?}");
    assert!(e.message.starts_with("Service \"bad-port\" is invalid: spec.ports[0].name: Invalid value: \"Web_1\": a lowercase RFC 1123 label"), "{}", e.message);
    let e = api_error(
        services
            .create(
                &pp,
                &svc(
                    json!({"metadata": {"name": "dup-port"}, "spec": {"selector": {"app": "x"},
                "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}}),
                ),
            )
            .await,
    );
    assert_eq!(
        e.message,
        "Service \"dup-port\" is invalid: spec.ports[1].name: Duplicate value: \"a\""
    );
    let e = api_error(
        services
            .create(
                &pp,
                &svc(json!({"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}})),
            )
            .await,
    );
    assert!(
        e.message
            .contains("metadata.name: Invalid value: \"1svc\": a DNS-1035 label"),
        "{}",
        e.message
    );
    let e = api_error(
        services
            .create(
                &pp,
                &svc(json!({"metadata": {"name": "ext-bad"}, "spec": {"type": "ExternalName"}})),
            )
            .await,
    );
    assert_eq!(
        e.message,
        "Service \"ext-bad\" is invalid: spec.externalName: Required value"
    );
    // A selector on an ExternalName Service is accepted and ignored, as
    // kube-apiserver does: no endpoints come of it.
    services
        .create(
            &pp,
            &svc(
                json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName",
            "externalName": "db.example.com", "selector": {"app": "web"}}}),
            ),
        )
        .await
        .expect("ExternalName with a selector is accepted");
    let e = api_error(
        slices
            .create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": "bad-slice"},
                "addressType": "IPv4", "endpoints": [{"addresses": ["fd00::1"]}]}))
                .unwrap(),
            )
            .await,
    );
    assert_eq!(
        e.message,
        "EndpointSlice.discovery.k8s.io \"bad-slice\" is invalid: endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address"
    );
    let mut own: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "manual",
        "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.2.3"]}], "ports": [{"port": 80}]}))
    .unwrap();
    own = slices.create(&pp, &own).await.unwrap();
    assert_eq!(
        own.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP"),
        "defaulted"
    );
    own.address_type = "IPv6".into();
    own.endpoints[0].addresses = vec!["fd00::3".into()];
    let e = api_error(slices.replace("manual", &pp, &own).await);
    assert!(
        e.message
            .contains("addressType: Invalid value: \"IPv6\": field is immutable"),
        "{}",
        e.message
    );

    // The node must be Ready before pods run.
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "the node Ready", || async {
        let n = nodes.get("s1").await.ok()?;
        n.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));

    // A Service reaching the pods' named port, then the pods.
    services
        .create(
            &pp,
            &svc(
                json!({"metadata": {"name": "web", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
            ),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "web",
                        "image": TEST_BUSYBOX_IMAGE,
                        "command": ["sh", "-c", "touch /tmp/ready && exec sleep 100000"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }))
    .unwrap();
    deployments.create(&pp, &dep).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = eventually(LONG, "three web pods Ready", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        let ready: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .collect();
        (ready.len() == 3).then_some(ready)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let ips: BTreeSet<String> = running
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();

    // Slices and Endpoints list the pods' IPs, ready, on the named port.
    let (list, endpoints) = eventually(LONG, "web's slices list the three pods", || async {
        let (list, e) = slice_endpoints(&slices, "web").await?;
        let got: BTreeSet<String> = e
            .iter()
            .filter(|x| x.1 && x.2 && !x.3)
            .map(|x| x.0.clone())
            .collect();
        (got == ips && e.len() == 3).then_some((list, e))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert!(endpoints.iter().all(|e| e.4 == Some(8080)), "{endpoints:?}");
    assert_eq!(list.len(), 1);
    let slice = &list[0];
    let meta = &slice.metadata;
    assert!(
        meta.name.as_deref().unwrap().starts_with("web-"),
        "{meta:?}"
    );
    let labels = meta.labels.clone().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(labels["tier"], "front", "the Service's labels are copied");
    let owner = &meta.owner_references.as_ref().unwrap()[0];
    let web = services.get("web").await.unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );
    assert_eq!(Some(&owner.uid), web.metadata.uid.as_ref());
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    let ep0 = &slice.endpoints[0];
    assert_eq!(ep0.node_name.as_deref(), Some("s1"));
    assert_eq!(
        ep0.target_ref.as_ref().unwrap().kind.as_deref(),
        Some("Pod")
    );
    let (ready, not_ready, ports) =
        eventually(LONG, "web's Endpoints list the three pods", || async {
            endpoints_of(&eps, "web")
                .await
                .filter(|(r, _, _)| *r == ips)
        })
        .await
        .unwrap();
    assert!(not_ready.is_empty());
    assert_eq!(ports, BTreeSet::from([8080]));
    let _ = ready;

    // A steady state writes nothing: no slice or Endpoints event for a
    // 5 s window while the probes keep running every second.
    let (s_events, e_events) = tokio::join!(
        events_for(Api::<EndpointSlice>::namespaced(client.clone(), "default")),
        events_for(Api::<Endpoints>::namespaced(client.clone(), "default")),
    );
    assert!(
        s_events.is_empty() && e_events.is_empty(),
        "writes in a steady state: {s_events:?} {e_events:?}"
    );

    // Every installed kubectl prints both kinds with upstream's columns.
    let kubectls = rke2_testbed::kubectls().unwrap();
    assert!(
        !kubectls.is_empty(),
        "no kubectl installed (scripts/install.sh)"
    );
    let one_ip = ips.iter().next().unwrap().clone();
    for (minor, k) in &kubectls {
        let o = kubectl(
            k,
            &kubeconfig,
            &["get", "endpoints,endpointslices", "-n", "default"],
        );
        let out = text(&o);
        eprintln!("kubectl 1.{minor} get endpoints,endpointslices:\n{out}");
        assert!(o.status.success(), "kubectl 1.{minor}: {out}");
        for want in [
            "ADDRESSTYPE",
            "PORTS",
            "ENDPOINTS",
            "endpoints/web",
            "endpointslice.discovery.k8s.io/web-",
            "IPv4",
            "8080",
        ] {
            assert!(
                out.contains(want),
                "kubectl 1.{minor}: no {want:?} in:\n{out}"
            );
        }
        assert!(
            out.contains(&format!("{one_ip}:8080")) || out.contains(&format!("{one_ip},")),
            "kubectl 1.{minor}: {out}"
        );
        assert!(
            out.contains(&format!("{me}:6443")),
            "kubectl 1.{minor}: {out}"
        );
        let o = kubectl(
            k,
            &kubeconfig,
            &[
                "get",
                "endpointslices",
                "-n",
                "default",
                "-o",
                "wide",
                "-l",
                "kubernetes.io/service-name=ext",
            ],
        );
        assert!(o.status.success(), "kubectl 1.{minor}: {}", text(&o));
        assert!(
            text(&o).contains("No resources found"),
            "ExternalName gets no slices: {}",
            text(&o)
        );
    }

    // A failing readiness probe moves one pod to not ready.
    let victim = running[0].metadata.name.clone().unwrap();
    let victim_ip = running[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    let k = kubectls.last().unwrap().1.clone();
    let o = kubectl(
        &k,
        &kubeconfig,
        &["exec", &victim, "--", "rm", "/tmp/ready"],
    );
    assert!(o.status.success(), "exec rm: {}", text(&o));
    eventually(LONG, "the unready pod not ready in the slice", || async {
        let (_, e) = slice_endpoints(&slices, "web").await?;
        e.iter()
            .any(|x| x.0 == victim_ip && !x.1 && !x.2 && !x.3)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let (ready, not_ready, _) =
        eventually(LONG, "the unready pod under notReadyAddresses", || async {
            endpoints_of(&eps, "web")
                .await
                .filter(|(_, n, _)| n.contains(&victim_ip))
        })
        .await
        .unwrap();
    assert_eq!(ready.len(), 2);
    assert!(!ready.contains(&victim_ip));
    assert_eq!(not_ready.len(), 1);
    let ep = eps.get("web").await.unwrap();
    let ann = ep.metadata.annotations.clone().unwrap_or_default();
    assert!(
        ann.contains_key("endpoints.kubernetes.io/last-change-trigger-time"),
        "the readiness change is the trigger: {ann:?}"
    );

    // Scaling to zero empties them (a placeholder slice stays).
    let o = kubectl(
        &k,
        &kubeconfig,
        &["scale", "deployment", "web", "--replicas=0"],
    );
    assert!(o.status.success(), "scale: {}", text(&o));
    eventually(LONG, "no endpoints once scaled to zero", || async {
        let (list, e) = slice_endpoints(&slices, "web").await?;
        let (r, n, _) = endpoints_of(&eps, "web").await?;
        (e.is_empty() && list.len() == 1 && r.is_empty() && n.is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let o = kubectl(
        &k,
        &kubeconfig,
        &[
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    );
    assert!(
        text(&o).contains("<unset>"),
        "placeholder slice: {}",
        text(&o)
    );
    let o = kubectl(
        &k,
        &kubeconfig,
        &["get", "endpoints", "web", "-n", "default"],
    );
    assert!(text(&o).contains("<none>"), "empty Endpoints: {}", text(&o));

    // Deleting the Service removes its Endpoints (the controller) and
    // its slices (garbage collection through the owner reference).
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(LONG, "web's Endpoints and slices gone", || async {
        let (list, _) = slice_endpoints(&slices, "web").await?;
        let ep = eps.get_opt("web").await.ok()?;
        (list.is_empty() && ep.is_none()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    s1.kill9();
}
