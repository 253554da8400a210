//! Auto-deploying manifests: files in `<data-dir>/server/manifests/` are
//! applied and re-applied on change; `disable` keeps a bundled addon out,
//! and uninstalls it when set later.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use rke2_testbed::{Server, ServerOpts, eventually};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_applied_and_reapplied_and_disable_keeps_an_addon_out() {
    let mut s = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some(format!(
                "pause-image: {}\ndisable:\n  - rke2-ingress-nginx\n",
                rke2_testbed::TEST_PAUSE_IMAGE
            )),
            // The DNS chart's helm Job runs as a pod: images and helm.
            seed: true,
            ..Default::default()
        },
    )
    .unwrap();
    let client = s.wait_ready(Duration::from_secs(90)).await.unwrap();
    let dir = s.data_dir.join("server/manifests");
    assert!(dir.join("rke2-coredns.yaml").exists());
    assert!(dir.join("rke2-metrics-server.yaml").exists());
    assert!(
        !dir.join("rke2-ingress-nginx.yaml").exists(),
        "disabled addon written"
    );

    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    // Its HelmChart is applied (its helm Job needs the pod network and the
    // service proxy, which a single-machine loopback server has not: the
    // bed tests install it).
    let helmcharts: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "kube-system",
        &rke2_controllers::helm::helmchart_resource(),
    );
    eventually(
        Duration::from_secs(60),
        "bundled metrics-server's HelmChart applied",
        || async {
            helmcharts
                .get_opt("rke2-metrics-server")
                .await
                .ok()
                .flatten()
        },
    )
    .await
    .unwrap();
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    assert!(
        dss.get_opt("rke2-ingress-nginx-controller")
            .await
            .unwrap()
            .is_none(),
        "disabled addon applied"
    );

    // A user's manifest: applied, then re-applied when it changes.
    let manifest = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: user-settings\n  namespace: default\ndata:\n  level: \"{v}\"\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: from-manifest\n"
        )
    };
    std::fs::write(dir.join("user.yaml"), manifest("1")).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let value = |want: &'static str| {
        let cms = cms.clone();
        async move {
            let cm = cms.get_opt("user-settings").await.ok().flatten()?;
            (cm.data?.get("level")?.as_str() == want).then_some(())
        }
    };
    eventually(Duration::from_secs(60), "user manifest applied", || {
        value("1")
    })
    .await
    .unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    // Documents are applied in file order: the Namespace follows the ConfigMap.
    eventually(
        Duration::from_secs(60),
        "second document applied",
        || async { ns.get_opt("from-manifest").await.ok().flatten() },
    )
    .await
    .unwrap();
    std::fs::write(dir.join("user.yaml"), manifest("2")).unwrap();
    eventually(
        Duration::from_secs(60),
        "changed manifest re-applied",
        || value("2"),
    )
    .await
    .unwrap();

    // A broken file is reported by name and does not stop the others.
    std::fs::write(dir.join("broken.yaml"), "kind: [unclosed\n").unwrap();
    eventually(
        Duration::from_secs(60),
        "broken manifest reported",
        || async { s.log_text().contains("broken.yaml").then_some(()) },
    )
    .await
    .unwrap();
    std::fs::write(dir.join("user.yaml"), manifest("3")).unwrap();
    eventually(
        Duration::from_secs(60),
        "other manifests still applied",
        || value("3"),
    )
    .await
    .unwrap();

    // DNS is there, installed by its HelmChart's helm Job (a bootstrap
    // chart: host network), on the addon image; disabled later, it is
    // uninstalled.
    let text = std::fs::read_to_string(dir.join("rke2-coredns.yaml")).unwrap();
    assert!(
        text.contains("kind: HelmChart") && text.contains("chartContent"),
        "{text}"
    );
    let dns = eventually(
        Duration::from_secs(180),
        "the DNS chart installed by helm",
        || async {
            deploys
                .get_opt("rke2-coredns-rke2-coredns")
                .await
                .ok()
                .flatten()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(
        dns.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get("meta.helm.sh/release-name")
            .map(String::as_str),
        Some("rke2-coredns"),
        "a helm release's object"
    );
    let image = dns.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert_eq!(image, rke2_runtime::addon_image::reference());
    s.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    s.opts.config_yaml = Some(format!(
        "pause-image: {}\ndisable:\n  - rke2-ingress-nginx\n  - rke2-coredns\n",
        rke2_testbed::TEST_PAUSE_IMAGE
    ));
    s.spawn().unwrap();
    let client = s.wait_ready(Duration::from_secs(90)).await.unwrap();
    assert!(!dir.join("rke2-coredns.yaml").exists());
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "kube-system");
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    eventually(
        Duration::from_secs(180),
        "the disabled DNS addon's objects deleted (helm uninstall)",
        || async {
            let gone = deploys
                .get_opt("rke2-coredns-rke2-coredns")
                .await
                .ok()?
                .is_none()
                && deploys
                    .get_opt("rke2-coredns-rke2-coredns-autoscaler")
                    .await
                    .ok()?
                    .is_none()
                && services
                    .get_opt("rke2-coredns-rke2-coredns")
                    .await
                    .ok()?
                    .is_none()
                && roles
                    .get_opt("rke2-coredns-rke2-coredns")
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    // Other addons stay.
    let helmcharts: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "kube-system",
        &rke2_controllers::helm::helmchart_resource(),
    );
    assert!(
        helmcharts
            .get_opt("rke2-metrics-server")
            .await
            .unwrap()
            .is_some()
    );
    let _ = s.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
}
