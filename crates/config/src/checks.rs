//! Checks of single values that need more than parsing, and of values
//! against each other: join tokens, the node name, the networks and the
//! listen ports. Each returns the reason in words; [`crate::build`] wraps
//! it with the key and where the value came from.
//!
//! Everything a server or agent would otherwise discover only after
//! writing trust material (or never: a node name the API refuses makes the
//! node role retry forever) is refused here, before anything is written.

use std::net::IpAddr;

use ipnet::IpNet;
use rke2_trust::{NODE_USER, SERVER_USER, Token};

use crate::Role;

/// Which token setting a value belongs to; the rules differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKey {
    /// `token` / `token-file`.
    Token,
    /// `agent-token` / `agent-token-file` (servers only).
    AgentToken,
}

/// Characters a token may not hold. k3s does not look, but a token is
/// used as an HTTP basic-auth password and to derive the key of the
/// bootstrap data: whitespace inside one is a paste or file mistake
/// (two tokens in one file, a line break from a terminal), and a control
/// character cannot travel in a header.
fn bad_char(t: &str) -> Option<(usize, char)> {
    t.chars()
        .enumerate()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
}

fn describe(c: char) -> String {
    match c {
        '\n' => "a line break".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        ' ' => "a space".into(),
        c if c.is_whitespace() => format!("whitespace U+{:04X}", c as u32),
        c => format!("the control character U+{:04X}", c as u32),
    }
}

/// Parses a `token` or `agent-token` value as the servers and agents will
/// (`rke2_trust::Token::parse`: `K10<64 hex>::<user>:<password>` or a bare
/// password) and applies the rules of its key and role. Messages never
/// repeat the value: it is a secret.
pub(crate) fn token(value: &str, key: TokenKey, role: Role) -> Result<Token, String> {
    if let Some((i, c)) = bad_char(value) {
        return Err(format!(
            "a token must not contain whitespace or control characters; found {} at character {}",
            describe(c),
            i + 1
        ));
    }
    let t = Token::parse(value).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.strip_prefix("invalid token: ").unwrap_or(&msg).to_string();
        format!("{msg} (want K10<sha256 of the server CA, 64 hex>::<user>:<password>, or a bare password)")
    })?;
    let Some(user) = t.user.as_deref() else {
        return Ok(t);
    };
    match (key, role) {
        (TokenKey::Token, Role::Server) if user != SERVER_USER => Err(if user == NODE_USER {
            "this is an agent token (user `node`): it can join agents, not servers; use the server token from server/token on a server".to_string()
        } else {
            format!(
                "the user of a server's token must be `{SERVER_USER}`, not {}",
                shown_user(user)
            )
        }),
        (TokenKey::Token, Role::Agent) if user != SERVER_USER && user != NODE_USER => Err(format!(
            "the user must be `{SERVER_USER}` or `{NODE_USER}` (the supervisor knows no other), not {}",
            shown_user(user)
        )),
        (TokenKey::AgentToken, _) if user != NODE_USER => Err(format!(
            "an agent token in the full form must have the user `{NODE_USER}` (K10<hash>::{NODE_USER}:<password>), not {}{}",
            shown_user(user),
            if user == SERVER_USER {
                "; this looks like the server token"
            } else {
                ""
            }
        )),
        _ => Ok(t),
    }
}

/// The user part of a token as an error message may show it: the users
/// k3s-style tokens name (`server`, `node`, `admin`) are shown; anything
/// else is only described, since a token missing its `:` carries (part
/// of) the password in what parses as its user.
fn shown_user(user: &str) -> String {
    if [SERVER_USER, NODE_USER, "admin"].contains(&user) {
        format!("`{user}`")
    } else {
        format!(
            "a user of {} characters (not shown: it may hold the password)",
            user.chars().count()
        )
    }
}

/// A server `token` value checked as `rke2 server` checks its `token` key
/// (also the new token of `rke2 token rotate`); the message never repeats
/// the value.
pub fn check_server_token(value: &str) -> Result<Token, String> {
    token(value, TokenKey::Token, Role::Server)
}

/// `agent-token` against `token` (both given): the agent password must
/// differ from the server password, or whoever holds the agent token can
/// present it as user `server` and fetch the cluster's CA keys; and two
/// CA hashes must name the same cluster.
pub(crate) fn agent_token_vs_token(agent: &Token, server: &Token) -> Result<(), String> {
    if rke2_trust::constant_time_eq(agent.password.as_bytes(), server.password.as_bytes()) {
        return Err(
            "its password is the password of `token`: an agent token must differ, or whoever holds it can use it as the server token (user `server`) and read the cluster's CA keys"
                .into(),
        );
    }
    if let (Some(a), Some(s)) = (&agent.ca_hash, &server.ca_hash)
        && a != s
    {
        return Err("its CA hash differs from the CA hash of `token`: the two tokens belong to different clusters".into());
    }
    Ok(())
}

/// Length of the suffix `with-node-id` appends (`-` and 8 hex digits).
pub(crate) const NODE_ID_SUFFIX_LEN: usize = 9;

/// Longest node name: the node password Secret is named
/// `<node>.node-password.rke2` and must itself be a valid name.
pub(crate) const NODE_NAME_MAX: usize = 253 - ".node-password.rke2".len();

/// A node name is a DNS-1123 subdomain (the Node object's name, upstream's
/// message), short enough for the node password Secret's name also with
/// the `with-node-id` suffix.
pub(crate) fn node_name(name: &str, with_node_id: bool) -> Result<(), String> {
    let errs = rke2_apimachinery::validation::validate_dns1123_subdomain(name);
    if !errs.is_empty() {
        return Err(errs.join(", "));
    }
    let max = if with_node_id {
        NODE_NAME_MAX - NODE_ID_SUFFIX_LEN
    } else {
        NODE_NAME_MAX
    };
    if name.len() > max {
        return Err(format!(
            "must be no more than {max} characters{}: the node password Secret `<node-name>.node-password.rke2` must be a valid name of at most 253",
            if with_node_id {
                " with with-node-id, which appends 9"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// Prefix length of the pod CIDR block each node gets (the node IPAM's
/// `/24` for IPv4, `/64` for IPv6).
fn node_block(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 24,
        IpNet::V6(_) => 64,
    }
}

/// `cluster-cidr` must hold at least one node's pod CIDR block; otherwise
/// the node IPAM can never give a node its podCIDR and no pod network comes up.
pub(crate) fn cluster_cidr(net: &IpNet) -> Result<(), String> {
    let block = node_block(net);
    if net.prefix_len() > block {
        return Err(format!(
            "smaller than one node's pod CIDR block (/{block}); use a prefix of at most /{block}"
        ));
    }
    Ok(())
}

/// Whether two networks share an address.
pub(crate) fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `cluster-dns` must be an address the Service allocator can give the
/// DNS Service: inside `service-cidr`, not its network or (IPv4) broadcast
/// address, and not its first address, which the `kubernetes` Service
/// holds. Agents call this once they know the cluster's `service-cidr`.
pub fn check_cluster_dns(dns: IpAddr, service_cidr: &IpNet) -> Result<(), String> {
    if !service_cidr.contains(&dns) {
        return Err(format!("not in service-cidr {service_cidr}"));
    }
    if dns == service_cidr.network() {
        return Err(format!(
            "the network address of service-cidr {service_cidr} is no Service address"
        ));
    }
    if let IpNet::V4(v4) = service_cidr
        && v4.prefix_len() < 31
        && dns == IpAddr::V4(v4.broadcast())
    {
        return Err(format!(
            "the broadcast address of service-cidr {service_cidr} is no Service address"
        ));
    }
    if dns == crate::nth_address(service_cidr, 1) {
        return Err(format!(
            "the first address of service-cidr {service_cidr} belongs to the `kubernetes` Service"
        ));
    }
    Ok(())
}

/// Ports a server always listens on beside its configured ones, with what
/// they are for.
pub(crate) const FIXED_SERVER_PORTS: &[(u16, &str)] = &[
    (2379, "etcd's client port"),
    (2380, "etcd's peer port"),
    (10250, "the node API's port"),
];
