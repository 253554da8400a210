//! The proxy without a cluster, for bench/ingress.sh: the routing table
//! built from a JSON list of API objects (Ingresses, Services,
//! EndpointSlices, TLS Secrets) read once, served on one HTTP and one
//! HTTPS address with the given number of runtime threads.
//!
//!     standalone OBJECTS.json HTTP_ADDR HTTPS_ADDR [THREADS]
//!
//! THREADS 0 runs a current-thread runtime.

use std::sync::Arc;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use rke2_ingress::routes::{Class, Inputs, Table};

// The allocator of the rke2 binary, whose `ingress-controller` this is.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: standalone OBJECTS.json HTTP_ADDR HTTPS_ADDR [THREADS]");
        std::process::exit(2);
    }
    let threads: usize = args.get(4).map(|t| t.parse()).transpose()?.unwrap_or(1);
    let objects: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&args[1])?)?;
    let (mut ing, mut svc, mut sl, mut sec) = (vec![], vec![], vec![], vec![]);
    for o in objects {
        match o["kind"].as_str() {
            Some("Ingress") => ing.push(Arc::new(serde_json::from_value::<Ingress>(o)?)),
            Some("Service") => svc.push(Arc::new(serde_json::from_value::<Service>(o)?)),
            Some("EndpointSlice") => sl.push(Arc::new(serde_json::from_value::<EndpointSlice>(o)?)),
            Some("Secret") => sec.push(Arc::new(serde_json::from_value::<Secret>(o)?)),
            other => return Err(format!("unexpected kind {other:?}").into()),
        }
    }
    let class = Class {
        name: "nginx".into(),
        controller: "k8s.io/ingress-nginx".into(),
    };
    let table = Table::build(
        &class,
        &Inputs {
            ingresses: &ing,
            classes: &[],
            services: &svc,
            slices: &sl,
            secrets: &sec,
            keys: None,
        },
    );
    for p in &table.problems {
        eprintln!("{}/{}: {}", p.namespace, p.name, p.message);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // 0 threads: a current-thread runtime (the listener's own thread).
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let cfg = rke2_ingress::Config {
            http_listen: args[2].parse()?,
            https_listen: args[3].parse()?,
            health_listen: None,
            settings: rke2_ingress::controller::Settings {
                class,
                election_id: String::new(),
                pod: None,
                publish_addresses: vec![],
            },
            default_ssl_certificate: None,
        };
        let table = Arc::new(ArcSwap::from_pointee(table));
        let (proxy, listeners) =
            rke2_ingress::bind(&cfg, table, rke2_ingress::tls::self_signed()?).await?;
        eprintln!("serving on {:?}", listeners.addrs());
        listeners
            .serve(proxy, tokio_util::sync::CancellationToken::new())
            .await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
