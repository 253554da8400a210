//! The rke2 supervisor: what servers and agents talk to on port 9345
//! before (and besides) the Kubernetes API. See DESIGN.md sections 3-5.
//!
//! * [`bootstrap`]: the shared secrets of a cluster (CA certificates and
//!   keys, service-account key, supervisor passwords) as one JSON document,
//!   and its encryption with the token password for storage in etcd.
//! * [`server`]: the HTTPS routes as an `axum::Router`; the binary serves
//!   it over TLS with the same serving certificate as 6443.
//! * [`client`]: what a joining server (and later an agent) does first:
//!   fetch and check the CA, then talk TLS pinned to it.

#![warn(missing_docs)]

pub mod bootstrap;
pub mod client;
pub mod server;

pub use bootstrap::{
    BootstrapError, Comparison, PASSWD_ENTRY, PBKDF2_ITERATIONS, Passwd, compare_files, decrypt,
    encrypt, pack, replace_files, set_passwd, storage_key, unpack, write_entries,
};
pub use client::{JoinError, SupervisorClient, compare_critical, fetch_cacerts, verify_ca};
pub use server::{ClusterInfo, SupervisorState, router};
