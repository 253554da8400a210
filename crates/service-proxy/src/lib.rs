//! The service proxy: what kube-proxy does on every node, in nftables
//! mode. Services and EndpointSlices (through the API) and this node's
//! facts become the desired contents of one nftables table
//! ([`TABLE`], family `ip`); the first sync writes the whole table in one
//! `nft -f -` transaction, later syncs write only the chains and map
//! elements that changed, again in one transaction.
//!
//! * [`model`]: Services and EndpointSlices reduced to service ports and
//!   their endpoints (pure).
//! * [`rules`]: the generator: model → [`rules::Ruleset`], and the nft
//!   scripts for a full and an incremental sync (pure).
//! * [`apply`]: runs `nft` with those scripts and keeps what the kernel
//!   holds.
//! * [`conntrack`]: the UDP flows to delete when an endpoint goes.
//! * [`runner`]: the watches, the debounced sync loop.
//!
//! IPv6 is left out: only IPv4 ClusterIPs, addresses and endpoints are
//! proxied (the project's cluster and service CIDRs are IPv4).

pub mod apply;
pub mod conntrack;
pub mod model;
pub mod rules;
pub mod runner;

/// The nftables table (family `ip`) that holds every rule of the proxy;
/// deleting it (`rke2 killall`) removes them all.
pub const TABLE: &str = "rke2-proxy";

/// Deletes the proxy's table if it exists; returns whether it existed.
/// What `rke2 killall` calls.
pub fn remove_table() -> Result<bool, apply::ApplyError> {
    apply::delete_table()
}
