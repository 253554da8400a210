//! The [`ObjectStore`] contract against a real etcd: the same checks the
//! in-memory store's unit tests run (`rke2_datastore::contract`), here
//! through [`Store`] to an etcd started as the server starts it (TLS with
//! client certificates, the production flags).

use std::net::IpAddr;
use std::time::Duration;

use rke2_datastore::store::StoreTls;
use rke2_datastore::{EtcdConfig, EtcdProcess, ObjectStore, Store};
use rke2_trust::ServerTrustParams;

/// Deadline for etcd to become healthy (2 busy cores).
const DEADLINE: Duration = Duration::from_secs(60);

/// A loopback address no other test process uses at the same time, so
/// etcd's fixed ports (2379/2380) do not collide.
fn unique_loopback() -> IpAddr {
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}",
        10 + (pid % 200),
        (pid / 200) % 250,
        200 + pid % 50
    )
    .parse()
    .expect("loopback address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ip = unique_loopback();
    let trust = rke2_trust::ensure_server_trust(&ServerTrustParams {
        data_dir: dir.path().to_path_buf(),
        node_name: "contract".into(),
        serving_sans: vec![ip.to_string()],
        etcd_sans: rke2_trust::etcd_sans("contract", &[ip]),
    })
    .expect("trust material");
    let client_url = format!("https://{ip}:2379");
    let peer_url = format!("https://{ip}:2380");
    let etcd = EtcdProcess::start(EtcdConfig {
        binary: "etcd".into(),
        name: "contract".into(),
        data_dir: dir.path().join("etcd"),
        log_file: dir.path().join("etcd.log"),
        listen_client_urls: vec![client_url.clone()],
        advertise_client_url: client_url.clone(),
        peer_url: peer_url.clone(),
        initial_cluster: format!("contract={peer_url}"),
        initial_cluster_state: "new".into(),
        trusted_ca_file: trust.etcd_server_ca.cert_path.clone(),
        cert_file: trust.etcd_server.cert_path.clone(),
        key_file: trust.etcd_server.key_path.clone(),
        peer_trusted_ca_file: trust.etcd_peer_ca.cert_path.clone(),
        peer_cert_file: trust.etcd_peer.cert_path.clone(),
        peer_key_file: trust.etcd_peer.key_path.clone(),
        force_new_cluster: false,
    })
    .expect("starting etcd");
    let store = Store::connect(
        &[client_url],
        Some(&StoreTls {
            ca_pem: trust.etcd_server_ca.cert_pem.clone(),
            cert_pem: trust.etcd_client.cert_pem.clone(),
            key_pem: trust.etcd_client.key_pem.clone(),
        }),
    )
    .await
    .expect("etcd client");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !ObjectStore::healthy(&store).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcd not healthy; log: {}",
            std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rke2_datastore::contract::run_all(&store).await;
    etcd.stop().await;
}
