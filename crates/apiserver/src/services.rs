//! Upstream's validation of Services (`ValidateService`) and of
//! `discovery.k8s.io/v1` EndpointSlices (`ValidateEndpointSlice`), with
//! kube-apiserver's field paths and messages, and EndpointSlice
//! defaulting. Called from `objects::validate`, `objects::validate_update`
//! and `objects::apply_defaults`.
//!
//! What upstream accepts is accepted here too: a `selector` on an
//! `ExternalName` Service is stored and ignored (the endpoint controllers
//! skip such Services), as kube-apiserver does; only its own fields
//! (`externalName`, no cluster IP) are checked.

use std::net::IpAddr;

use serde_json::{Value, json};

use rke2_apimachinery::validation as v;

/// One `field.Error`: field path, error type, detail.
type Cause = (String, String, String);

fn cause(field: impl Into<String>, ty: &str, detail: impl Into<String>) -> Cause {
    (field.into(), ty.into(), detail.into())
}

/// Go's `%q` of a string, as `field.Invalid` prints string values.
fn q(s: &str) -> String {
    crate::schema::go_quote(s)
}

/// The protocols a Service or EndpointSlice port may carry
/// (`supportedPortProtocols`, listed sorted as upstream prints them).
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn protocols_list() -> String {
    PROTOCOLS
        .iter()
        .map(|p| q(p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `validation.IsValidPortNum`.
fn port_num_problems(n: i64) -> Vec<String> {
    if (1..=65535).contains(&n) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

/// `validation.IsValidPortName` (an IANA_SVC_NAME).
pub fn port_name_problems(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters".to_string());
    }
    let charset_ok = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !charset_ok {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    } else if !name.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens (--)".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen (-)".into());
    }
    errs
}

/// Go's `%#v` of the `core.ServicePort{Protocol, Port}` key upstream
/// reports a duplicate port with.
fn service_port_key(protocol: &str, port: i64) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
        q(protocol)
    )
}

/// A JSON value as `field.Invalid` prints it: strings quoted, numbers bare.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => q(s),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// upstream's `ValidateService` (spec part; names and metadata are
/// checked by `objects::validate`).
pub fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("");
    let cluster_ip = spec["clusterIP"].as_str().unwrap_or("");
    let headless = cluster_ip == "None";
    let ports: &[Value] = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if ports.is_empty() && !headless && ty != "ExternalName" {
        causes.push(cause("spec.ports", "Required value", ""));
    }
    match ty {
        "LoadBalancer" | "NodePort" if headless => causes.push(cause(
            "spec.clusterIPs[0]",
            "Invalid value",
            format!("\"None\": may not be set to 'None' for {ty} services"),
        )),
        "ExternalName" => {
            if !cluster_ip.is_empty() {
                causes.push(cause(
                    "spec.clusterIPs",
                    "Forbidden",
                    "may not be set for ExternalName services",
                ));
            }
            // The CNAME may end in a dot to mark it fully qualified.
            let name = spec["externalName"].as_str().unwrap_or("");
            let cname = name.strip_suffix('.').unwrap_or(name);
            if cname.is_empty() {
                causes.push(cause("spec.externalName", "Required value", ""));
            } else {
                for msg in v::validate_dns1123_subdomain(cname) {
                    causes.push(cause(
                        "spec.externalName",
                        "Invalid value",
                        format!("{}: {msg}", q(cname)),
                    ));
                }
            }
        }
        _ => {}
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = p["name"].as_str().unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(cause(format!("{path}.name"), "Required value", ""));
        } else if !name.is_empty() {
            for msg in v::validate_dns1123_label(name) {
                causes.push(cause(
                    format!("{path}.name"),
                    "Invalid value",
                    format!("{}: {msg}", q(name)),
                ));
            }
            if names.contains(&name) {
                causes.push(cause(format!("{path}.name"), "Duplicate value", q(name)));
            } else {
                names.push(name);
            }
        }
        let port = p["port"].as_i64().unwrap_or(0);
        for msg in port_num_problems(port) {
            causes.push(cause(
                format!("{path}.port"),
                "Invalid value",
                format!("{port}: {msg}"),
            ));
        }
        match p["protocol"].as_str().unwrap_or("") {
            "" => causes.push(cause(format!("{path}.protocol"), "Required value", "")),
            pr if !PROTOCOLS.contains(&pr) => causes.push(cause(
                format!("{path}.protocol"),
                "Unsupported value",
                format!("{}: supported values: {}", q(pr), protocols_list()),
            )),
            _ => {}
        }
        match &p["targetPort"] {
            Value::String(s) => {
                for msg in port_name_problems(s) {
                    causes.push(cause(
                        format!("{path}.targetPort"),
                        "Invalid value",
                        format!("{}: {msg}", q(s)),
                    ));
                }
            }
            Value::Number(n) => {
                let n = n.as_i64().unwrap_or(0);
                for msg in port_num_problems(n) {
                    causes.push(cause(
                        format!("{path}.targetPort"),
                        "Invalid value",
                        format!("{n}: {msg}"),
                    ));
                }
            }
            _ => {}
        }
        if ty == "ClusterIP" && p["nodePort"].as_i64().unwrap_or(0) != 0 {
            causes.push(cause(
                format!("{path}.nodePort"),
                "Forbidden",
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(selector) = spec["selector"].as_object() {
        for (k, val) in selector {
            for msg in v::validate_label_key(k) {
                causes.push(cause(
                    "spec.selector",
                    "Invalid value",
                    format!("{}: {msg}", q(k)),
                ));
            }
            let s = val.as_str().unwrap_or("");
            for msg in v::validate_label_value(s) {
                causes.push(cause(
                    format!("spec.selector[{k}]"),
                    "Invalid value",
                    format!("{}: {msg}", q(s)),
                ));
            }
        }
    }
    match spec["sessionAffinity"].as_str().unwrap_or("") {
        "" => causes.push(cause("spec.sessionAffinity", "Required value", "")),
        "None" | "ClientIP" => {}
        other => causes.push(cause(
            "spec.sessionAffinity",
            "Unsupported value",
            format!("{}: supported values: \"ClientIP\", \"None\"", q(other)),
        )),
    }
    match ty {
        "" => causes.push(cause("spec.type", "Required value", "")),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName" => {}
        other => causes.push(cause(
            "spec.type",
            "Unsupported value",
            format!(
                "{}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                q(other)
            ),
        )),
    }
    // Duplicate (protocol, port) and (protocol, nodePort) pairs.
    let mut seen_ports: Vec<(&str, i64)> = Vec::new();
    let mut seen_node_ports: Vec<(&str, i64)> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let protocol = p["protocol"].as_str().unwrap_or("");
        let node_port = p["nodePort"].as_i64().unwrap_or(0);
        if node_port != 0 {
            if seen_node_ports.contains(&(protocol, node_port)) {
                causes.push(cause(
                    format!("spec.ports[{i}].nodePort"),
                    "Duplicate value",
                    node_port.to_string(),
                ));
            }
            seen_node_ports.push((protocol, node_port));
        }
        let port = p["port"].as_i64().unwrap_or(0);
        if seen_ports.contains(&(protocol, port)) {
            causes.push(cause(
                format!("spec.ports[{i}]"),
                "Duplicate value",
                service_port_key(protocol, port),
            ));
        }
        seen_ports.push((protocol, port));
    }
}

/// upstream's `ValidateServiceUpdate` addition: the cluster IP of a
/// Service that has one never changes (its claim was allocated at create).
pub fn validate_service_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let ip = |o: &Value| o["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    let ty = |o: &Value| o["spec"]["type"].as_str().unwrap_or("").to_string();
    if ty(new) != "ExternalName"
        && ty(old) != "ExternalName"
        && !ip(old).is_empty()
        && ip(old) != ip(new)
    {
        causes.push(cause(
            "spec.clusterIPs[0]",
            "Invalid value",
            format!("{}: may not change once set", q(&ip(new))),
        ));
    }
}

/// The most endpoints one EndpointSlice may hold (`maxEndpoints`).
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
const MAX_SLICE_ADDRESSES: usize = 100;
const MAX_SLICE_PORTS: usize = 100;

/// EndpointSlice defaults (`SetDefaults_EndpointPort`): a port's name
/// is `""` and its protocol `TCP` when not given.
pub fn default_endpoint_slice(obj: &mut Value) {
    if let Some(ports) = obj["ports"].as_array_mut() {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            if !p["name"].is_string() {
                p["name"] = json!("");
            }
            if !p["protocol"].is_string() {
                p["protocol"] = json!("TCP");
            }
        }
    }
}

/// upstream's `ValidateEndpointIP`: the address kinds that make no sense
/// as an endpoint.
fn endpoint_ip_problems(s: &str) -> Vec<String> {
    let Ok(ip) = s.parse::<IpAddr>() else {
        return vec!["must be a valid IP address".into()];
    };
    let mut errs = Vec::new();
    if ip.is_unspecified() {
        errs.push(format!("may not be unspecified ({s})"));
    }
    if ip.is_loopback() {
        errs.push("may not be in the loopback range (127.0.0.0/8, ::1/128)".into());
    }
    let link_local_unicast = match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local_unicast {
        errs.push("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into());
    }
    let link_local_multicast = match ip {
        IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => (a.segments()[0] & 0xff0f) == 0xff02,
    };
    if link_local_multicast {
        errs.push("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into());
    }
    errs
}

/// upstream's `IsFullyQualifiedDomainName`: the value shown is the name
/// (or the failing label) that broke the rule.
fn fqdn_problem(name: &str) -> Option<(String, String)> {
    if name.is_empty() {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let errs = v::validate_dns1123_subdomain(name);
    if !errs.is_empty() {
        return Some((name.to_string(), errs.join(",")));
    }
    if name.split('.').count() < 2 {
        return Some((
            name.to_string(),
            "should be a domain with at least two segments separated by dots".into(),
        ));
    }
    name.split('.').find_map(|label| {
        let errs = v::validate_dns1123_label(label);
        (!errs.is_empty()).then(|| (label.to_string(), errs.join(",")))
    })
}

/// upstream's `ValidateEndpointSlice` (metadata is checked by
/// `objects::validate`). `update` also accepts the deprecated `IP`
/// address type, as `ValidateEndpointSliceUpdate` does.
pub fn validate_endpoint_slice(obj: &Value, update: bool, causes: &mut Vec<Cause>) {
    let address_type = obj["addressType"].as_str().unwrap_or("");
    let supported: &[&str] = if update {
        &["FQDN", "IP", "IPv4", "IPv6"]
    } else {
        &["FQDN", "IPv4", "IPv6"]
    };
    if address_type.is_empty() {
        causes.push(cause("addressType", "Required value", ""));
    } else if !supported.contains(&address_type) {
        causes.push(cause(
            "addressType",
            "Unsupported value",
            format!(
                "{}: supported values: {}",
                q(address_type),
                supported
                    .iter()
                    .map(|s| q(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let endpoints: &[Value] = obj["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if endpoints.len() > MAX_SLICE_ENDPOINTS {
        causes.push(cause(
            "endpoints",
            "Too many",
            format!(
                "{}: must have at most {MAX_SLICE_ENDPOINTS} items",
                endpoints.len()
            ),
        ));
    } else {
        for (i, ep) in endpoints.iter().enumerate() {
            let path = format!("endpoints[{i}]");
            let addrs: &[Value] = ep["addresses"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if addrs.is_empty() {
                causes.push(cause(
                    format!("{path}.addresses"),
                    "Required value",
                    "must contain at least 1 address",
                ));
            } else if addrs.len() > MAX_SLICE_ADDRESSES {
                causes.push(cause(
                    format!("{path}.addresses"),
                    "Too many",
                    format!(
                        "{}: must have at most {MAX_SLICE_ADDRESSES} items",
                        addrs.len()
                    ),
                ));
            }
            for (j, a) in addrs.iter().enumerate() {
                let field = format!("{path}.addresses[{j}]");
                let a = a.as_str().unwrap_or("");
                let family_problem = match address_type {
                    "IPv4" => (!matches!(a.parse::<IpAddr>(), Ok(IpAddr::V4(_))))
                        .then_some("must be a valid IPv4 address"),
                    "IPv6" => (!matches!(a.parse::<IpAddr>(), Ok(IpAddr::V6(_))))
                        .then_some("must be a valid IPv6 address"),
                    _ => None,
                };
                match address_type {
                    "IPv4" | "IPv6" => {
                        if let Some(msg) = family_problem {
                            causes.push(cause(&field, "Invalid value", format!("{}: {msg}", q(a))));
                        }
                        for msg in endpoint_ip_problems(a) {
                            causes.push(cause(&field, "Invalid value", format!("{}: {msg}", q(a))));
                        }
                    }
                    "IP" if a.parse::<IpAddr>().is_err() => {
                        causes.push(cause(
                            &field,
                            "Invalid value",
                            format!("{}: must be a valid IP address", q(a)),
                        ));
                    }
                    "FQDN" => {
                        if a.is_empty() {
                            causes.push(cause(&field, "Required value", ""));
                        } else if let Some((shown, msg)) = fqdn_problem(a) {
                            causes.push(cause(
                                &field,
                                "Invalid value",
                                format!("{}: {msg}", q(&shown)),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            if let Some(node) = ep["nodeName"].as_str() {
                for msg in v::validate_dns1123_subdomain(node) {
                    causes.push(cause(
                        format!("{path}.nodeName"),
                        "Invalid value",
                        format!("{}: {msg}", q(node)),
                    ));
                }
            }
            if let Some(host) = ep["hostname"].as_str() {
                for msg in v::validate_dns1123_label(host) {
                    causes.push(cause(
                        format!("{path}.hostname"),
                        "Invalid value",
                        format!("{}: {msg}", q(host)),
                    ));
                }
            }
        }
    }
    let ports: &[Value] = obj["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if ports.len() > MAX_SLICE_PORTS {
        causes.push(cause(
            "ports",
            "Too many",
            format!("{}: must have at most {MAX_SLICE_PORTS} items", ports.len()),
        ));
        return;
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        let name = p["name"].as_str().unwrap_or("");
        if !name.is_empty() {
            for msg in v::validate_dns1123_label(name) {
                causes.push(cause(
                    format!("{path}.name"),
                    "Invalid value",
                    format!("{}: {msg}", q(name)),
                ));
            }
        }
        if names.contains(&name) {
            causes.push(cause(format!("{path}.name"), "Duplicate value", q(name)));
        } else {
            names.push(name);
        }
        match p["protocol"].as_str() {
            None => causes.push(cause(format!("{path}.protocol"), "Required value", "")),
            Some(pr) if !PROTOCOLS.contains(&pr) => causes.push(cause(
                format!("{path}.protocol"),
                "Unsupported value",
                format!("{}: supported values: {}", q(pr), protocols_list()),
            )),
            Some(_) => {}
        }
        if let Some(port) = p["port"].as_i64()
            && !(0..=65535).contains(&port)
        {
            // The typed decode already refuses what is not an int32;
            // upstream's declarative rule covers the rest.
            causes.push(cause(
                format!("{path}.port"),
                "Invalid value",
                format!("{port}: must be between 0 and 65535, inclusive"),
            ));
        }
        if let Some(app) = p["appProtocol"].as_str() {
            for msg in v::validate_label_key(app) {
                causes.push(cause(
                    format!("{path}.appProtocol"),
                    "Invalid value",
                    format!("{}: {msg}", q(app)),
                ));
            }
        }
    }
}

/// `ValidateEndpointSliceUpdate`'s rule: the address type never changes.
pub fn validate_endpoint_slice_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let old_type = &old["addressType"];
    let new_type = &new["addressType"];
    if old_type != new_type {
        causes.push(cause(
            "addressType",
            "Invalid value",
            format!("{}: field is immutable", shown(new_type)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(f: impl FnOnce(&mut Vec<Cause>)) -> Vec<String> {
        let mut c = Vec::new();
        f(&mut c);
        c.into_iter()
            .map(|(f, t, d)| {
                if d.is_empty() {
                    format!("{f}: {t}")
                } else {
                    format!("{f}: {t}: {d}")
                }
            })
            .collect()
    }

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s"}, "spec": spec})
    }

    #[test]
    fn service_ports_need_unique_dns_label_names() {
        let s = svc(
            json!({"type": "ClusterIP", "sessionAffinity": "None", "ports": [
                {"name": "Web_1", "port": 80, "protocol": "TCP", "targetPort": 80},
                {"name": "dup", "port": 81, "protocol": "TCP", "targetPort": "http"},
                {"name": "dup", "port": 82, "protocol": "TCP", "targetPort": 82},
                {"port": 80, "protocol": "TCP", "targetPort": "-bad--"},
            ]}),
        );
        let e = errors(|c| validate_service(&s, c));
        assert_eq!(
            e[0],
            "spec.ports[0].name: Invalid value: \"Web_1\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        );
        assert_eq!(e[1], "spec.ports[2].name: Duplicate value: \"dup\"");
        assert_eq!(e[2], "spec.ports[3].name: Required value");
        assert!(e.contains(&"spec.ports[3].targetPort: Invalid value: \"-bad--\": must not contain consecutive hyphens (--)".to_string()), "{e:?}");
        assert!(e.contains(&"spec.ports[3]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}".to_string()), "{e:?}");
    }

    #[test]
    fn external_name_services_may_carry_a_selector_but_need_a_name() {
        let ok = svc(
            json!({"type": "ExternalName", "externalName": "db.example.com.",
                            "sessionAffinity": "None", "selector": {"app": "x"}}),
        );
        assert!(errors(|c| validate_service(&ok, c)).is_empty());
        let bad = svc(
            json!({"type": "ExternalName", "sessionAffinity": "None", "clusterIP": "10.43.0.9"}),
        );
        assert_eq!(
            errors(|c| validate_service(&bad, c)),
            [
                "spec.clusterIPs: Forbidden: may not be set for ExternalName services",
                "spec.externalName: Required value"
            ]
        );
        let wrong = svc(
            json!({"type": "Weird", "sessionAffinity": "Sticky", "ports": [{"port": 0, "protocol": "ICMP", "targetPort": 0}]}),
        );
        let e = errors(|c| validate_service(&wrong, c));
        assert!(
            e.contains(
                &"spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
                    .to_string()
            ),
            "{e:?}"
        );
        assert!(e.contains(&"spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"".to_string()), "{e:?}");
        assert!(e.contains(&"spec.type: Unsupported value: \"Weird\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"".to_string()), "{e:?}");
        assert!(e.contains(&"spec.sessionAffinity: Unsupported value: \"Sticky\": supported values: \"ClientIP\", \"None\"".to_string()), "{e:?}");
    }

    #[test]
    fn endpoint_slice_addresses_must_fit_their_type() {
        let s = json!({"addressType": "IPv4", "endpoints": [
            {"addresses": ["10.42.0.5"], "hostname": "web-0"},
            {"addresses": ["fd00::1"]},
            {"addresses": ["127.0.0.1"]},
            {"addresses": []},
        ], "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                     {"name": "http", "port": 81, "protocol": "ICMP"}]});
        assert_eq!(
            errors(|c| validate_endpoint_slice(&s, false, c)),
            [
                "endpoints[1].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
                "endpoints[2].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "endpoints[3].addresses: Required value: must contain at least 1 address",
                "ports[1].name: Duplicate value: \"http\"",
                "ports[1].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ]
        );
        let many = json!({"addressType": "IPv4",
            "endpoints": vec![json!({"addresses": ["10.0.0.1"]}); 1001]});
        assert_eq!(
            errors(|c| validate_endpoint_slice(&many, false, c)),
            ["endpoints: Too many: 1001: must have at most 1000 items"]
        );
        let fqdn = json!({"addressType": "FQDN", "endpoints": [{"addresses": ["example.com"]}, {"addresses": ["localhost"]}]});
        assert_eq!(
            errors(|c| validate_endpoint_slice(&fqdn, false, c)),
            [
                "endpoints[1].addresses[0]: Invalid value: \"localhost\": should be a domain with at least two segments separated by dots"
            ]
        );
        assert_eq!(
            errors(|c| validate_endpoint_slice(&json!({"addressType": "IP"}), false, c)),
            [
                "addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
            ]
        );
        assert!(
            errors(|c| validate_endpoint_slice(&json!({"addressType": "IP"}), true, c)).is_empty()
        );
        assert_eq!(
            errors(|c| validate_endpoint_slice_update(
                &json!({"addressType": "IPv4"}),
                &json!({"addressType": "IPv6"}),
                c
            )),
            ["addressType: Invalid value: \"IPv6\": field is immutable"]
        );
    }
}
