//! `rke2 status`: one screen for an operator on a server: this node, the
//! etcd members (voter or learner, leader, raft index lag) and what quorum
//! tolerates, every apiserver and supervisor reached directly and through
//! the registration address, whether `tls-san` covers that address, the
//! soonest certificate expiry, the last snapshot, and every node's
//! readiness and version. `-o json` for scripts; the exit code is 1 when
//! something is wrong. Colours on a terminal, plain text when piped.
//!
//! It takes the server's own flags and config file (so it finds the data
//! dir, addresses and ports the server uses) and talks to the local etcd
//! and API with the server's own client certificates.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Endpoints, Node};
use rke2_config::{Config, Role};
use serde::Serialize;

/// How long any one probe may take: a dead member must not stall the page.
const PROBE: Duration = Duration::from_secs(5);

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Health {
    Ok,
    Warn,
    Fail,
}

#[derive(Serialize)]
struct Check {
    what: String,
    health: Health,
    detail: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct EtcdMember {
    name: String,
    id: String,
    learner: bool,
    leader: bool,
    raft_index: Option<u64>,
    lag: Option<u64>,
    client_url: String,
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRow {
    name: String,
    ready: bool,
    roles: Vec<String>,
    version: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    node: String,
    role: &'static str,
    data_dir: String,
    version: String,
    etcd_members: Vec<EtcdMember>,
    voters: usize,
    healthy_voters: usize,
    failures_tolerated: usize,
    nodes: Vec<NodeRow>,
    /// As `rke2 secrets-encrypt status -o json` reports it (`null` when
    /// this server's supervisor did not answer).
    secrets_encryption: Option<serde_json::Value>,
    /// The cluster's storage format record (`null` when etcd did not answer).
    storage_format: Option<StorageFormat>,
    ca_bundles: Vec<CaBundle>,
    checks: Vec<Check>,
    healthy: bool,
}

/// The cluster's `/rke2/storage-format` record against this binary's.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct StorageFormat {
    /// The stored format (1 when the record is absent: written before it existed).
    format: u64,
    written_by: String,
    /// The newest format this binary reads.
    binary_format: u64,
}

/// One CA file: how many CA certificates it trusts (more than one after
/// `rke2 certificate rotate-ca`, until the old one is dropped).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CaBundle {
    file: String,
    certificates: usize,
    subjects: Vec<String>,
    /// When the first certificate of the file (the one that signs) ends, RFC 3339.
    not_after: String,
}

/// The CA files of a server, relative to `server/tls`.
const CA_FILES: &[&str] = &[
    "server-ca.crt",
    "client-ca.crt",
    "request-header-ca.crt",
    "etcd/server-ca.crt",
    "etcd/peer-ca.crt",
];

/// Runs `rke2 status [-o json] [server flags]`; returns the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let mut json_out = false;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") | Some("--output") => match it.next().and_then(|v| v.to_str()) {
                Some("json") => json_out = true,
                Some("text") => json_out = false,
                other => {
                    eprintln!("rke2 status: --output must be text or json, not {other:?}");
                    return 2;
                }
            },
            Some("-o=json") | Some("--output=json") => json_out = true,
            Some("-h") | Some("--help") => {
                println!(
                    "rke2 status [-o text|json] [server flags, e.g. --config FILE --data-dir DIR]\n\nShows this server's view of the cluster; exit code 1 when something is wrong."
                );
                return 0;
            }
            _ => rest.push(a.clone()),
        }
    }
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let cfg = match rke2_config::load(Role::Server, &rest, &env) {
        Ok(l) => l.config,
        Err(e) => {
            eprintln!("rke2 status: {e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2 status: {e}");
            return 1;
        }
    };
    match runtime.block_on(gather(&cfg)) {
        Ok(report) => {
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", render(&report, std::io::stdout().is_terminal()));
            }
            if report.healthy { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("rke2 status: {e:#}");
            1
        }
    }
}

fn check(
    checks: &mut Vec<Check>,
    what: impl Into<String>,
    health: Health,
    detail: impl Into<String>,
) {
    checks.push(Check {
        what: what.into(),
        health,
        detail: detail.into(),
    });
}

async fn gather(cfg: &Config) -> Result<Report> {
    let data = &cfg.data_dir;
    let tls = data.join("server/tls");
    if !tls.is_dir() {
        anyhow::bail!(
            "{} has no server state: `rke2 status` runs on a server (is --data-dir right?)",
            data.display()
        );
    }
    let read = |p: &str| {
        std::fs::read_to_string(tls.join(p))
            .with_context(|| format!("reading {}", tls.join(p).display()))
    };
    let mut checks = Vec::new();

    // etcd: members, leader, raft indexes.
    let etcd_tls = rke2_datastore::store::StoreTls {
        ca_pem: read("etcd/server-ca.crt")?,
        cert_pem: read("etcd/client.crt")?,
        key_pem: read("etcd/client.key")?,
    };
    // etcd listens on the node address, and on loopback only when that is
    // not itself a loopback address: ask where this server's apiserver is.
    let local_etcd = format!(
        "https://{}:2379",
        url_host(
            &cfg.bind_address
                .filter(|b| !b.is_unspecified())
                .map(|b| b.to_string())
                .unwrap_or_else(|| "127.0.0.1".into())
        )
    );
    let mut members = Vec::new();
    let mut local_store = None;
    let list = match tokio::time::timeout(PROBE, async {
        let store =
            rke2_datastore::Store::connect(std::slice::from_ref(&local_etcd), Some(&etcd_tls))
                .await?;
        let members = store.members().await?;
        Ok::<_, rke2_datastore::StoreError>((store, members))
    })
    .await
    {
        Ok(Ok((store, m))) => {
            local_store = Some(store);
            Some(m)
        }
        Ok(Err(e)) => {
            check(
                &mut checks,
                "etcd",
                Health::Fail,
                format!("local member at {local_etcd}: {e}"),
            );
            None
        }
        Err(_) => {
            check(
                &mut checks,
                "etcd",
                Health::Fail,
                format!("local member at {local_etcd}: no answer within {PROBE:?}"),
            );
            None
        }
    };
    let mut leader_id = 0;
    for m in list.unwrap_or_default() {
        let url = m.client_urls.first().cloned().unwrap_or_default();
        let mut row = EtcdMember {
            name: m.name.clone(),
            id: format!("{:x}", m.id),
            learner: m.is_learner,
            client_url: url.clone(),
            ..Default::default()
        };
        if url.is_empty() {
            row.error = Some("not started".into());
        } else {
            let probe = tokio::time::timeout(PROBE, async {
                let store =
                    rke2_datastore::Store::connect(std::slice::from_ref(&url), Some(&etcd_tls))
                        .await?;
                store.member_raft_status().await
            })
            .await;
            match probe {
                Ok(Ok((_, leader, index))) => {
                    leader_id = leader;
                    row.raft_index = Some(index);
                }
                Ok(Err(e)) => row.error = Some(e.to_string()),
                Err(_) => row.error = Some(format!("no answer within {PROBE:?}")),
            }
        }
        members.push((m.id, row));
    }
    let leader_index = members
        .iter()
        .find(|(id, _)| *id == leader_id)
        .and_then(|(_, r)| r.raft_index);
    let mut etcd_members: Vec<EtcdMember> = members
        .into_iter()
        .map(|(id, mut r)| {
            r.leader = id == leader_id && leader_id != 0;
            if let (Some(l), Some(i)) = (leader_index, r.raft_index) {
                r.lag = Some(l.saturating_sub(i));
            }
            r
        })
        .collect();
    etcd_members.sort_by(|a, b| a.name.cmp(&b.name));
    let voters = etcd_members.iter().filter(|m| !m.learner).count();
    let healthy_voters = etcd_members
        .iter()
        .filter(|m| !m.learner && m.error.is_none())
        .count();
    let quorum = voters / 2 + 1;
    let failures_tolerated = healthy_voters.saturating_sub(quorum);
    if voters > 0 {
        let health = if healthy_voters < quorum {
            Health::Fail
        } else if healthy_voters < voters || voters % 2 == 0 {
            Health::Warn
        } else {
            Health::Ok
        };
        check(
            &mut checks,
            "etcd quorum",
            health,
            format!(
                "{healthy_voters}/{voters} voters healthy, quorum {quorum}: {failures_tolerated} more may fail{}",
                if voters % 2 == 0 {
                    " (an even number of voters tolerates no more failures than one fewer)"
                } else {
                    ""
                }
            ),
        );
    }
    if leader_id == 0 && voters > 0 {
        check(
            &mut checks,
            "etcd leader",
            Health::Fail,
            "no member reports a leader",
        );
    }
    for m in &etcd_members {
        if let Some(e) = &m.error {
            check(
                &mut checks,
                format!("etcd member {}", m.name),
                Health::Fail,
                e.clone(),
            );
        } else if m.lag.is_some_and(|l| l > 1000) {
            check(
                &mut checks,
                format!("etcd member {}", m.name),
                Health::Warn,
                format!("raft index {} behind the leader", m.lag.unwrap_or(0)),
            );
        }
    }

    // The storage format: a newer one than this binary's means this binary
    // must not serve the cluster (a server of it would refuse to start).
    let mut storage_format = None;
    if let Some(store) = &local_store {
        match tokio::time::timeout(PROBE, store.get(crate::cluster::STORAGE_FORMAT_KEY)).await {
            Ok(Ok(kv)) => {
                let parsed = match kv {
                    None => Ok((1, "a release before the record existed".to_string())),
                    Some(kv) => crate::cluster::parse_storage_format(&kv.value),
                };
                match parsed {
                    Ok((format, written_by)) => {
                        let f = StorageFormat {
                            format,
                            written_by,
                            binary_format: crate::cluster::STORAGE_FORMAT,
                        };
                        let (health, detail) = storage_format_check(&f);
                        check(&mut checks, "storage format", health, detail);
                        storage_format = Some(f);
                    }
                    Err(e) => check(
                        &mut checks,
                        "storage format",
                        Health::Fail,
                        format!("{e:#}"),
                    ),
                }
            }
            Ok(Err(e)) => check(
                &mut checks,
                "storage format",
                Health::Fail,
                format!("reading {}: {e}", crate::cluster::STORAGE_FORMAT_KEY),
            ),
            Err(_) => check(
                &mut checks,
                "storage format",
                Health::Fail,
                format!("no answer within {PROBE:?}"),
            ),
        }
    }

    // The API: nodes, and every apiserver and supervisor.
    let api_host = cfg
        .bind_address
        .filter(|b| !b.is_unspecified())
        .map(|b| b.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let ca = read("server-ca.crt")?;
    let admin_cert = read("client-admin.crt")?;
    let admin_key = read("client-admin.key")?;
    let client_for = |host: String| {
        let ca = ca.clone();
        let cert = admin_cert.clone();
        let key = admin_key.clone();
        let port = cfg.https_listen_port;
        async move {
            crate::server::kube_client(
                &format!("https://{}:{port}", url_host(&host)),
                ca.as_bytes(),
                cert.as_bytes(),
                key.as_bytes(),
            )
            .await
        }
    };
    let mut nodes = Vec::new();
    let mut apiservers: Vec<String> = Vec::new();
    match client_for(api_host.clone()).await {
        Ok(client) => {
            let node_api: kube::Api<Node> = kube::Api::all(client.clone());
            match tokio::time::timeout(PROBE, node_api.list(&Default::default())).await {
                Ok(Ok(list)) => {
                    for n in list.items {
                        let ready = n
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        let mut roles: Vec<String> = n
                            .metadata
                            .labels
                            .unwrap_or_default()
                            .keys()
                            .filter_map(|k| {
                                k.strip_prefix("node-role.kubernetes.io/")
                                    .map(str::to_string)
                            })
                            .collect();
                        roles.sort();
                        nodes.push(NodeRow {
                            name: n.metadata.name.unwrap_or_default(),
                            ready,
                            roles,
                            version: n
                                .status
                                .and_then(|s| s.node_info)
                                .map(|i| i.kubelet_version)
                                .unwrap_or_default(),
                        });
                    }
                }
                Ok(Err(e)) => check(
                    &mut checks,
                    "apiserver (local)",
                    Health::Fail,
                    e.to_string(),
                ),
                Err(_) => check(
                    &mut checks,
                    "apiserver (local)",
                    Health::Fail,
                    format!("no answer within {PROBE:?}"),
                ),
            }
            let eps: kube::Api<Endpoints> = kube::Api::namespaced(client, "default");
            if let Ok(Ok(ep)) = tokio::time::timeout(PROBE, eps.get("kubernetes")).await {
                for s in ep.subsets.unwrap_or_default() {
                    for a in s.addresses.unwrap_or_default() {
                        apiservers.push(a.ip);
                    }
                }
            }
        }
        Err(e) => check(
            &mut checks,
            "apiserver (local)",
            Health::Fail,
            format!("{e:#}"),
        ),
    }
    for n in &nodes {
        if !n.ready {
            check(
                &mut checks,
                format!("node {}", n.name),
                Health::Fail,
                "not Ready",
            );
        }
    }
    apiservers.sort();
    apiservers.dedup();
    let token = std::fs::read_to_string(data.join("server/token"))
        .ok()
        .and_then(|t| rke2_trust::Token::parse(t.trim()).ok());
    for ip in &apiservers {
        let readyz = async {
            let c = client_for(ip.clone()).await?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            c.request_text(req).await.map_err(anyhow::Error::from)
        };
        match tokio::time::timeout(PROBE, readyz).await {
            Ok(Ok(_)) => check(
                &mut checks,
                format!("apiserver {ip}:{}", cfg.https_listen_port),
                Health::Ok,
                "ready",
            ),
            Ok(Err(e)) => check(
                &mut checks,
                format!("apiserver {ip}:{}", cfg.https_listen_port),
                Health::Fail,
                format!("{e:#}"),
            ),
            Err(_) => check(
                &mut checks,
                format!("apiserver {ip}:{}", cfg.https_listen_port),
                Health::Fail,
                format!("no answer within {PROBE:?}"),
            ),
        }
        supervisor_check(
            &mut checks,
            &format!("https://{}:{}", url_host(ip), cfg.supervisor_port),
            &ca,
            token.as_ref(),
        )
        .await;
    }

    // Secrets encryption, as `rke2 secrets-encrypt status` reports it: this
    // server's supervisor answers from the cluster's record in etcd and
    // every server's applied hash.
    let local_supervisor = format!("https://{}:{}", url_host(&api_host), cfg.supervisor_port);
    let secrets_encryption = match &token {
        None => {
            check(
                &mut checks,
                "secrets encryption",
                Health::Warn,
                "no server/token to authenticate with",
            );
            None
        }
        Some(token) => {
            let probe = async {
                rke2_supervisor::SupervisorClient::new(
                    &local_supervisor,
                    ca.as_bytes(),
                    rke2_trust::SERVER_USER,
                    &token.password,
                )?
                .encrypt_status()
                .await
            };
            match tokio::time::timeout(PROBE, probe).await {
                Ok(Ok(v)) => {
                    let (health, detail) = encryption_check(&v);
                    check(&mut checks, "secrets encryption", health, detail);
                    Some(v)
                }
                Ok(Err(e)) => {
                    check(
                        &mut checks,
                        "secrets encryption",
                        Health::Fail,
                        format!("{local_supervisor}: {e}"),
                    );
                    None
                }
                Err(_) => {
                    check(
                        &mut checks,
                        "secrets encryption",
                        Health::Fail,
                        format!("{local_supervisor}: no answer within {PROBE:?}"),
                    );
                    None
                }
            }
        }
    };

    // The registration address, and whether the serving certificate covers it.
    let serving_sans = read("serving-kube-apiserver.crt")
        .ok()
        .and_then(|pem| rke2_trust::cert_san_strings(&pem).ok())
        .unwrap_or_default();
    match &cfg.server {
        Some(url) => {
            supervisor_check(&mut checks, url, &ca, token.as_ref()).await;
            let host = url
                .trim_start_matches("https://")
                .split('/')
                .next()
                .unwrap_or_default();
            let host = host
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(host)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            let covered = serving_sans.iter().any(|s| s.eq_ignore_ascii_case(&host));
            check(
                &mut checks,
                format!("tls-san covers {host}"),
                if covered { Health::Ok } else { Health::Fail },
                if covered {
                    "the serving certificate names the registration address".to_string()
                } else {
                    format!(
                        "the serving certificate does not name {host}: add it to tls-san on every server"
                    )
                },
            );
        }
        None => {
            let missing: Vec<&String> = cfg
                .tls_san
                .iter()
                .filter(|s| !serving_sans.iter().any(|x| x.eq_ignore_ascii_case(s)))
                .collect();
            if missing.is_empty() {
                check(
                    &mut checks,
                    "tls-san",
                    Health::Ok,
                    format!("serving certificate names {}", cfg.tls_san.join(", ")),
                );
            } else {
                check(
                    &mut checks,
                    "tls-san",
                    Health::Fail,
                    format!("not in the serving certificate: {missing:?} (restart to re-issue)"),
                );
            }
        }
    }

    // Certificates: the soonest end.
    let now = chrono::Utc::now().timestamp();
    let mut soonest: Option<(String, rke2_trust::CertInfo)> = None;
    for f in crate::certificate::cert_files(data, &[]) {
        if let Ok(infos) = rke2_trust::describe_cert_file(&f) {
            for i in infos {
                if soonest
                    .as_ref()
                    .is_none_or(|(_, s)| i.not_after < s.not_after)
                {
                    soonest = Some((f.strip_prefix(data).unwrap_or(&f).display().to_string(), i));
                }
            }
        }
    }
    if let Some((file, info)) = soonest {
        let days = (info.not_after - now) / 86_400;
        let health = match crate::certificate::status(&info, now) {
            "OK" => Health::Ok,
            "WARNING" => Health::Warn,
            _ => Health::Fail,
        };
        check(
            &mut checks,
            "certificates",
            health,
            format!("soonest to end: {file} ({}) in {days} days", info.subject),
        );
    }

    // The CAs: a file holding more than one is mid-rotation (rotate-ca
    // keeps the old CA trusted beside the new one).
    let mut ca_bundles = Vec::new();
    for f in CA_FILES {
        let Ok(infos) = rke2_trust::describe_cert_file(&tls.join(f)) else {
            continue;
        };
        let Some(first) = infos.first() else {
            continue;
        };
        ca_bundles.push(CaBundle {
            file: format!("server/tls/{f}"),
            certificates: infos.len(),
            subjects: infos.iter().map(|i| i.subject.clone()).collect(),
            not_after: chrono::DateTime::from_timestamp(first.not_after, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
    }
    let bundled: Vec<String> = ca_bundles
        .iter()
        .filter(|b| b.certificates > 1)
        .map(|b| format!("{} ({})", b.file, b.certificates))
        .collect();
    check(
        &mut checks,
        "CA certificates",
        Health::Ok,
        if bundled.is_empty() {
            format!("{} CA files, one CA each", ca_bundles.len())
        } else {
            format!(
                "bundles after a CA rotation, old CAs still trusted: {}",
                bundled.join(", ")
            )
        },
    );

    // Snapshots: the newest in `etcd-snapshot-dir` (sidecars and
    // unfinished `.part` files are not snapshots), and the next scheduled one.
    let snap_dir = &cfg.etcd_snapshot.dir;
    let newest = crate::etcd_snapshot::local::list(snap_dir, &cfg.node_name)
        .ok()
        .and_then(|l| l.into_iter().max_by_key(|s| s.created));
    let next = if cfg.etcd_snapshot.disable {
        "scheduled snapshots disabled".to_string()
    } else {
        match crate::etcd_snapshot::schedule::Schedule::parse(&cfg.etcd_snapshot.schedule_cron) {
            Ok(s) => s
                .next_after(chrono::Local::now())
                .map(|t| {
                    format!(
                        "next: {}",
                        t.with_timezone(&chrono::Utc)
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                })
                .unwrap_or_else(|| "no next run".into()),
            Err(e) => e,
        }
    };
    match newest {
        Some(snap) => {
            let at = chrono::DateTime::from_timestamp(snap.created, 0).unwrap_or_default();
            check(
                &mut checks,
                "snapshots",
                Health::Ok,
                format!("last: {} at {}; {next}", snap.name, at.to_rfc3339()),
            );
        }
        None => check(
            &mut checks,
            "snapshots",
            Health::Warn,
            format!("none in {}; {next}", snap_dir.display()),
        ),
    }

    let healthy = !checks.iter().any(|c| c.health == Health::Fail);
    Ok(Report {
        node: cfg.node_name.clone(),
        role: "server",
        data_dir: data.display().to_string(),
        version: crate::VERSION.to_string(),
        etcd_members,
        voters,
        healthy_voters,
        failures_tolerated,
        nodes,
        secrets_encryption,
        storage_format,
        ca_bundles,
        checks,
        healthy,
    })
}

/// A supervisor's `/v1-rke2/readyz` (as user `server` with this server's
/// token): answers once that server's API can serve.
async fn supervisor_check(
    checks: &mut Vec<Check>,
    url: &str,
    ca: &str,
    token: Option<&rke2_trust::Token>,
) {
    let what = format!("supervisor {url}");
    let Some(token) = token else {
        check(
            checks,
            what,
            Health::Warn,
            "no server/token to authenticate with",
        );
        return;
    };
    let probe = async {
        let c = rke2_supervisor::SupervisorClient::new(
            url,
            ca.as_bytes(),
            rke2_trust::SERVER_USER,
            &token.password,
        )?;
        c.readyz().await
    };
    match tokio::time::timeout(PROBE, probe).await {
        Ok(Ok(true)) => check(checks, what, Health::Ok, "ready"),
        Ok(Ok(false)) => check(
            checks,
            what,
            Health::Fail,
            "answers, but its API is not ready",
        ),
        Ok(Err(e)) => check(checks, what, Health::Fail, e.to_string()),
        Err(_) => check(
            checks,
            what,
            Health::Fail,
            format!("no answer within {PROBE:?}"),
        ),
    }
}

/// A stored format newer than this binary's is a failure: this binary's
/// server would refuse to start on the cluster.
fn storage_format_check(f: &StorageFormat) -> (Health, String) {
    if f.format > f.binary_format {
        (
            Health::Fail,
            format!(
                "the cluster's data is in format {}, written by {}; this rke2 ({}) reads formats up to {}: upgrade it before it serves this cluster",
                f.format,
                f.written_by,
                crate::VERSION,
                f.binary_format
            ),
        )
    } else {
        (
            Health::Ok,
            format!(
                "format {} (written by {}); this rke2 reads up to {}",
                f.format, f.written_by, f.binary_format
            ),
        )
    }
}

/// One line from `rke2 secrets-encrypt status -o json`: enabled or not,
/// the stage and the active key; servers applying different
/// configurations (mid-rotation) are a warning.
fn encryption_check(v: &serde_json::Value) -> (Health, String) {
    let stage = v["stage"].as_str().unwrap_or("");
    if stage.is_empty() {
        return (Health::Ok, "disabled (no configuration)".into());
    }
    let active = v["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["active"] == true)
        .map(|k| {
            format!(
                "{} ({})",
                k["name"].as_str().unwrap_or(""),
                k["type"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_else(|| "none".into());
    let state = if v["enable"] == true {
        "enabled"
    } else {
        "disabled"
    };
    if v["hashMatch"] == true {
        (
            Health::Ok,
            format!("{state}, stage {stage}, current key {active}"),
        )
    } else {
        (
            Health::Warn,
            format!(
                "{state}, stage {stage}, current key {active}; servers differ: {}",
                v["hashError"].as_str().unwrap_or("")
            ),
        )
    }
}

fn url_host(h: &str) -> String {
    if h.contains(':') && !h.starts_with('[') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

fn render(r: &Report, colour: bool) -> String {
    let paint = |h: Health| -> String {
        let (code, word) = match h {
            Health::Ok => ("32", "ok"),
            Health::Warn => ("33", "WARN"),
            Health::Fail => ("31", "FAIL"),
        };
        if colour {
            format!("\x1b[{code}m{word:<4}\x1b[0m")
        } else {
            format!("{word:<4}")
        }
    };
    let mut out = String::new();
    out.push_str(&format!(
        "Node:     {} ({}, rke2 {})\nData dir: {}\n\netcd members ({} voters, {} healthy, {} more may fail):\n",
        r.node, r.role, r.version, r.data_dir, r.voters, r.healthy_voters, r.failures_tolerated
    ));
    out.push_str(&format!(
        "  {:<32} {:<8} {:<7} {:>10} {:>6}  {}\n",
        "NAME", "ROLE", "LEADER", "RAFT INDEX", "LAG", "CLIENT URL"
    ));
    for m in &r.etcd_members {
        out.push_str(&format!(
            "  {:<32} {:<8} {:<7} {:>10} {:>6}  {}{}\n",
            m.name,
            if m.learner { "learner" } else { "voter" },
            if m.leader { "*" } else { "" },
            m.raft_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            m.lag.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            m.client_url,
            m.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        ));
    }
    out.push_str("\nNodes:\n");
    out.push_str(&format!(
        "  {:<32} {:<9} {:<28} {}\n",
        "NAME", "STATUS", "ROLES", "VERSION"
    ));
    for n in &r.nodes {
        out.push_str(&format!(
            "  {:<32} {:<9} {:<28} {}\n",
            n.name,
            if n.ready { "Ready" } else { "NotReady" },
            if n.roles.is_empty() {
                "<none>".to_string()
            } else {
                n.roles.join(",")
            },
            n.version
        ));
    }
    if let Some(f) = &r.storage_format {
        out.push_str(&format!(
            "\nStorage format: {} (written by {}; this rke2 reads up to {})\n",
            f.format, f.written_by, f.binary_format
        ));
    }
    if let Some(v) = &r.secrets_encryption {
        out.push_str("\nSecrets encryption:\n");
        for line in crate::secrets_encrypt::status_text(v).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if !r.ca_bundles.is_empty() {
        out.push_str(&format!(
            "\nCAs:\n  {:<32} {:>5}  {:<22} {}\n",
            "FILE", "CERTS", "SIGNING CA ENDS", "SUBJECTS"
        ));
        for b in &r.ca_bundles {
            out.push_str(&format!(
                "  {:<32} {:>5}  {:<22} {}\n",
                b.file,
                b.certificates,
                b.not_after,
                b.subjects.join(", ")
            ));
        }
    }
    out.push_str("\nChecks:\n");
    for c in &r.checks {
        out.push_str(&format!(
            "  {}  {:<40} {}\n",
            paint(c.health),
            c.what,
            c.detail
        ));
    }
    out.push_str(&format!(
        "\n{}\n",
        if r.healthy {
            "Healthy."
        } else {
            "Something is wrong (see FAIL above)."
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_storage_format_fails() {
        let f = |format| StorageFormat {
            format,
            written_by: "v9.9.9".into(),
            binary_format: 2,
        };
        assert_eq!(storage_format_check(&f(2)).0, Health::Ok);
        assert_eq!(storage_format_check(&f(1)).0, Health::Ok);
        let (h, d) = storage_format_check(&f(3));
        assert_eq!(h, Health::Fail);
        assert!(d.contains("format 3, written by v9.9.9"), "{d}");
    }

    #[test]
    fn encryption_line() {
        let v = serde_json::json!({"enable": true, "stage": "start", "hashMatch": true, "hashError": "",
            "keys": [{"active": true, "type": "AES-CBC", "name": "aescbckey"}]});
        assert_eq!(
            encryption_check(&v),
            (
                Health::Ok,
                "enabled, stage start, current key aescbckey (AES-CBC)".into()
            )
        );
        let v = serde_json::json!({"enable": true, "stage": "prepare", "hashMatch": false, "hashError": "x differs",
            "keys": []});
        assert_eq!(encryption_check(&v).0, Health::Warn);
        let v = serde_json::json!({"enable": false, "stage": "", "keys": []});
        assert_eq!(encryption_check(&v).0, Health::Ok);
    }
}
