//! Services and EndpointSlices reduced to what the rules need: one
//! [`ServicePort`] per port of a proxied Service, with its endpoints.
//! Pure: no IO, so the generator can be tested and fuzzed without a
//! cluster.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// A transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling (`TCP`, ...); unknown values are `None`.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The nftables spelling (`tcp`, ...).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// What the proxy knows about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The Node's name (endpoints with this `nodeName` are local).
    pub name: String,
    /// The node's IPv4 addresses: NodePorts answer on each.
    pub addresses: Vec<Ipv4Addr>,
    /// The pod network (`cluster-cidr`): ClusterIP traffic from outside it
    /// is masqueraded, as kube-proxy's `--cluster-cidr`.
    pub cluster_cidr: Option<Ipv4Net>,
    /// The service network (`service-cidr`): traffic to an unallocated
    /// address in it is dropped.
    pub service_cidr: Option<Ipv4Net>,
}

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The endpoint's address.
    pub ip: Ipv4Addr,
    /// The target port.
    pub port: u16,
    /// Whether it runs on this node.
    pub local: bool,
}

/// One port of a proxied Service with its usable endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The port's name (`""` when unnamed).
    pub port_name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// The NodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip`: the
    /// external addresses the service port is routed on.
    pub external_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// The endpoints, sorted, without duplicates.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `namespace/name:port`, as kube-proxy names a service port.
    pub fn display(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.service, self.port_name)
    }

    /// Whether the port is reached from outside the cluster (NodePort,
    /// external or load-balancer IPs).
    pub fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }

    /// The endpoints for traffic from inside (ClusterIP).
    pub fn internal_endpoints(&self) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| !self.internal_local || e.local)
            .collect()
    }

    /// The endpoints for traffic from outside (NodePort, external IPs).
    pub fn external_endpoints(&self) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| !self.external_local || e.local)
            .collect()
    }
}

/// Whether a Service is proxied at all: ExternalName Services and
/// headless ones (`clusterIP: None`) are not, nor is one without an IPv4
/// ClusterIP.
pub fn proxied_cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ip = spec.cluster_ip.as_deref()?;
    ip.parse().ok()
}

/// The service ports of `svc` with their endpoints from `slices` (any
/// slices; those of other Services are skipped). Returns nothing for a
/// Service that is not proxied.
pub fn service_ports(svc: &Service, slices: &[&EndpointSlice], node: &str) -> Vec<ServicePort> {
    let Some(cluster_ip) = proxied_cluster_ip(svc) else {
        return Vec::new();
    };
    let (Some(spec), Some(namespace), Some(name)) = (
        svc.spec.as_ref(),
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
    ) else {
        return Vec::new();
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let with_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let mut external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if ty == "LoadBalancer" {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        external_ips.extend(
            ingress
                .iter()
                .flat_map(|i| i.iter())
                .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
        );
    }
    external_ips.sort();
    external_ips.dedup();
    external_ips.retain(|ip| *ip != cluster_ip);
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .filter(|t| *t > 0)
            .map(|t| t as u32)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let own: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.address_type == "IPv4"
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(name)
        })
        .collect();
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        if port == 0 {
            continue;
        }
        let port_name = p.name.clone().unwrap_or_default();
        let node_port = if with_node_ports {
            p.node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
        } else {
            None
        };
        out.push(ServicePort {
            namespace: namespace.to_string(),
            service: name.to_string(),
            endpoints: endpoints_of(&own, &port_name, protocol, node),
            port_name,
            protocol,
            cluster_ip,
            port,
            node_port,
            external_ips: external_ips.clone(),
            affinity_timeout,
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        });
    }
    out
}

/// The endpoints of one service port across the Service's slices: ready
/// ones; when none is ready, the serving ones that are terminating (as
/// kube-proxy, so a rolling update's last pods keep answering).
fn endpoints_of(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node: &str,
) -> Vec<Endpoint> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for s in slices {
        let Some(target) = s.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port) = target
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        for e in &s.endpoints {
            // Endpoints have one address of the slice's type (upstream
            // uses the first).
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let c = e.conditions.as_ref();
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let term = c.and_then(|c| c.terminating).unwrap_or(false);
            let ep = Endpoint {
                ip,
                port,
                local: e.node_name.as_deref() == Some(node),
            };
            if is_ready {
                ready.push(ep);
            } else if serving && term {
                terminating.push(ep);
            }
        }
    }
    let mut eps = if ready.is_empty() { terminating } else { ready };
    eps.sort();
    eps.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
    eps
}

/// Every proxied service port of `services` with endpoints from
/// `slices`, sorted by namespace, name and port.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> Vec<ServicePort> {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.clone(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
        ) else {
            continue;
        };
        by_service.entry((ns, svc)).or_default().push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let key = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        out.extend(service_ports(svc, slices, node));
    }
    out.sort_by(|a, b| {
        (&a.namespace, &a.service, &a.port_name, a.protocol).cmp(&(
            &b.namespace,
            &b.service,
            &b.port_name,
            b.protocol,
        ))
    });
    out
}

#[cfg(test)]
mod tests;
