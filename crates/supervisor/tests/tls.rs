//! The router served over real TLS on 127.0.0.1, driven by the client the
//! way a joining server uses it.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rke2_supervisor::{
    ClusterInfo, JoinError, Passwd, SupervisorClient, SupervisorState, fetch_cacerts, router,
    unpack, verify_ca,
};
use rke2_trust::{ServerTrust, ServerTrustParams, Token};
use serde_json::json;
use tokio::net::TcpListener;

struct Fake;

impl ClusterInfo for Fake {
    fn api_ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn apiservers(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async { vec!["127.0.0.1:6443".to_string(), "10.0.0.2:6443".to_string()] })
    }
    fn etcd_members(&self) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async {
            Ok(json!({"members": [{
                "name": "n1-0123abcd",
                "peerURLs": ["https://127.0.0.1:2380"],
                "clientURLs": ["https://127.0.0.1:2379"],
                "isLearner": false,
                "id": "8e9e05c52164694d",
            }]}))
        })
    }
    fn check_node_password(
        &self,
        node: String,
        password: String,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if node == "taken" && password != "right" {
                Err("node name taken".to_string())
            } else {
                Ok(())
            }
        })
    }
    fn address_holders(
        &self,
    ) -> BoxFuture<'_, Result<rke2_supervisor::server::AddressHolders, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn trust(dir: &Path) -> ServerTrust {
    rke2_trust::ensure_server_trust(&ServerTrustParams {
        data_dir: dir.to_path_buf(),
        node_name: "n1".into(),
        serving_sans: vec!["127.0.0.1".into()],
        etcd_sans: vec!["127.0.0.1".into()],
    })
    .unwrap()
}

fn passwd() -> Passwd {
    Passwd {
        server: "server-pw".into(),
        node: "agent-pw".into(),
    }
}

/// Serve the router over TLS with the serving certificate; returns the URL.
async fn serve(t: &ServerTrust) -> String {
    let state = Arc::new(SupervisorState {
        server_ca_pem: t.server_ca.cert_pem.clone(),
        passwd: std::sync::RwLock::new(passwd()),
        cluster_config: json!({
            "cluster-cidr": "10.42.0.0/16",
            "service-cidr": "10.43.0.0/16",
            "cluster-domain": "cluster.local",
            "disable": [],
        }),
        tls_dir: t.tls_dir.clone(),
        info: Arc::new(Fake),
    });
    let tls = rke2_trust::server_tls_config(
        t.serving.cert_pem.as_bytes(),
        t.serving.key_pem.as_bytes(),
        None,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    format!("https://{addr}")
}

#[tokio::test]
async fn join_flow_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let t = trust(dir.path());
    let url = serve(&t).await;

    // 1. /cacerts without verification, checked against the token.
    let ca = fetch_cacerts(&url).await.unwrap();
    assert_eq!(
        ca,
        t.server_ca.cert_pem.as_bytes(),
        "bytes exactly as stored"
    );
    let token = Token::server(t.server_ca.cert_pem.as_bytes(), "server-pw");
    verify_ca(&token, &ca).unwrap();
    verify_ca(&Token::parse("server-pw").unwrap(), &ca).unwrap();

    // A token from another cluster is refused, naming both hashes.
    let other_dir = tempfile::tempdir().unwrap();
    let other = trust(other_dir.path());
    let wrong = Token::server(other.server_ca.cert_pem.as_bytes(), "server-pw");
    let err = verify_ca(&wrong, &ca).unwrap_err();
    assert!(matches!(err, JoinError::CaMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(wrong.ca_hash.as_deref().unwrap()), "{msg}");
    assert!(msg.contains(&rke2_trust::ca_hash(&ca)), "{msg}");

    // 2-4. Pinned client as user server.
    let c = SupervisorClient::new(&url, &ca, "server", "server-pw").unwrap();
    assert!(c.readyz().await.unwrap());
    let cfg = c.config().await.unwrap();
    assert_eq!(cfg["cluster-cidr"], "10.42.0.0/16");
    rke2_supervisor::compare_critical(&cfg, &cfg).unwrap();
    assert_eq!(
        c.apiservers().await.unwrap(),
        vec!["127.0.0.1:6443", "10.0.0.2:6443"]
    );
    let db = c.db_info().await.unwrap();
    assert_eq!(db["members"][0]["name"], "n1-0123abcd");
    assert_eq!(db["members"][0]["isLearner"], false);

    let doc = c.server_bootstrap().await.unwrap();
    let joiner = tempfile::tempdir().unwrap();
    let joiner_tls = rke2_trust::tls_dir(joiner.path());
    assert_eq!(unpack(&doc, &joiner_tls).unwrap(), passwd());
    for (crt, key) in rke2_trust::CA_FILES {
        for f in [crt, key] {
            assert_eq!(
                std::fs::read(t.tls_dir.join(f)).unwrap(),
                std::fs::read(joiner_tls.join(f)).unwrap(),
                "{f}"
            );
        }
    }
    // The joiner now builds the same CAs: its own serving cert chains to
    // the cluster CA, so the cluster's token hash fits it too.
    let joined = trust(joiner.path());
    assert_eq!(joined.server_ca.cert_pem, t.server_ca.cert_pem);

    // The agent token: config yes, server bootstrap data no.
    let n = SupervisorClient::new(&url, &ca, "node", "agent-pw").unwrap();
    assert_eq!(n.config().await.unwrap(), cfg);
    assert!(n.readyz().await.unwrap());
    let err = n.server_bootstrap().await.unwrap_err();
    assert!(matches!(err, JoinError::Forbidden { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("403") && msg.contains("agent token"), "{msg}");
    assert!(msg.contains("/v1-rke2/server-bootstrap"), "{msg}");
    assert!(matches!(
        n.db_info().await.unwrap_err(),
        JoinError::Forbidden { .. }
    ));

    // Wrong password: 401 with a message about the token password.
    let bad = SupervisorClient::new(&url, &ca, "server", "nope").unwrap();
    let err = bad.config().await.unwrap_err();
    assert!(matches!(err, JoinError::Unauthorized { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("401") && msg.contains("token password"),
        "{msg}"
    );
    assert!(msg.contains(&format!("{url}/v1-rke2/config")), "{msg}");

    // Pinned to another cluster's CA: the TLS handshake fails.
    let pinned_wrong = SupervisorClient::new(
        &url,
        other.server_ca.cert_pem.as_bytes(),
        "server",
        "server-pw",
    )
    .unwrap();
    let err = pinned_wrong.config().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, JoinError::Transport { .. }), "{msg}");
    assert!(
        msg.contains("TLS handshake") && msg.contains("not signed by the cluster's server CA"),
        "{msg}"
    );
}

#[tokio::test]
async fn host_must_be_in_sans() {
    // The serving cert holds 127.0.0.1 only; "localhost" is not a SAN here,
    // so the pinned client refuses it even with the right CA.
    let dir = tempfile::tempdir().unwrap();
    let t = trust(dir.path());
    let url = serve(&t).await;
    let port = url.rsplit(':').next().unwrap();
    let ca = t.server_ca.cert_pem.as_bytes();
    let c = SupervisorClient::new(
        &format!("https://localhost:{port}"),
        ca,
        "server",
        "server-pw",
    )
    .unwrap();
    let err = c.config().await.unwrap_err().to_string();
    assert!(
        err.contains("TLS handshake") && err.contains("tls-san"),
        "{err}"
    );
    // fetch_cacerts does not care about names.
    assert_eq!(
        fetch_cacerts(&format!("https://localhost:{port}"))
            .await
            .unwrap(),
        ca
    );
}

#[tokio::test]
async fn connection_refused_names_url() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = fetch_cacerts(&format!("https://{addr}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("https://{addr}/cacerts")), "{err}");
    assert!(err.contains("connect"), "{err}");
}
