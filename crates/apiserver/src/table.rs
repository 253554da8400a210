//! `meta.k8s.io/v1 Table` output with kube-apiserver's columns.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::registry::{Printer, ResourceType};

/// What a Table row carries as `object` (the `includeObject` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// PartialObjectMetadata (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses the query parameter; `None` for an unknown value.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("") | Some("Metadata") => Some(Self::Metadata),
            Some("None") => Some(Self::None),
            Some("Object") => Some(Self::Object),
            _ => None,
        }
    }
}

fn col(name: &str, ty: &str, format: &str, description: &str, priority: i32) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

/// The column definitions of a type.
pub fn columns(rt: &ResourceType) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    );
    let age = col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    let s = |n: &str, d: &str| col(n, "string", "", d, 0);
    let w = |n: &str, d: &str| col(n, "string", "", d, 1);
    let i = |n: &str, d: &str| col(n, "integer", "", d, 0);
    match &rt.printer {
        // API aggregation: NAME SERVICE AVAILABLE AGE (aggregator/mod.rs).
        Printer::ApiService => {
            let mut v = vec![name];
            v.extend(crate::aggregator::table_columns());
            v.push(age);
            v
        }
        Printer::Ingress => {
            let mut v = vec![name];
            v.extend(crate::networking::ingress_columns());
            v.push(age);
            v
        }
        Printer::IngressClass => {
            let mut v = vec![name];
            v.extend(crate::networking::ingress_class_columns());
            v.push(age);
            v
        }
        Printer::CronJob => {
            let (mid, wide) = crate::batch::columns();
            let mut v = vec![name];
            v.extend(mid);
            v.push(age);
            v.extend(wide);
            v
        }
        Printer::PersistentVolume | Printer::PersistentVolumeClaim => {
            let (cols, wide) = if rt.printer == Printer::PersistentVolume {
                crate::storage::pv_columns()
            } else {
                crate::storage::pvc_columns()
            };
            let mut v = vec![name];
            v.extend(cols);
            v.push(age);
            v.extend(wide);
            v
        }
        Printer::PodDisruptionBudget => {
            let mut v = vec![name];
            v.extend(crate::disruption::columns());
            v.push(age);
            v
        }
        Printer::HorizontalPodAutoscaler => {
            let mut v = vec![name];
            v.extend(crate::autoscaling::columns());
            v.push(age);
            v
        }
        Printer::ResourceQuota => {
            let mut v = vec![name];
            v.extend(crate::quota::columns());
            v
        }
        Printer::StorageClass => {
            let mut v = vec![name];
            v.extend(crate::storage::class_columns());
            v.push(age);
            v
        }
        Printer::PriorityClass => {
            let mut v = vec![name];
            v.extend(crate::scheduling::columns());
            v
        }
        Printer::Columns(extra) => {
            let mut out = vec![name];
            out.extend(
                extra
                    .iter()
                    .map(|c| col(&c.name, &c.type_, &c.format, &c.description, c.priority)),
            );
            out
        }
        Printer::Default => vec![name, col("Created At", "date", "", "Creation timestamp", 0)],
        Printer::Namespace => vec![name, s("Status", "The status of the namespace"), age],
        Printer::Node => vec![
            name,
            s("Status", "The status of the node"),
            s("Roles", "The roles of the node"),
            age,
            s("Version", "Kubelet Version reported by the node."),
            w("Internal-IP", "List of internal IPs for the node."),
            w("External-IP", "List of external IPs for the node."),
            w(
                "OS-Image",
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            w(
                "Kernel-Version",
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            w(
                "Container-Runtime",
                "Container runtime version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        Printer::Pod => vec![
            name,
            s(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            s(
                "Status",
                "The aggregate status of the containers in this pod.",
            ),
            s(
                "Restarts",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age,
            w(
                "IP",
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            w(
                "Node",
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            w(
                "Nominated Node",
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            w(
                "Readiness Gates",
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        Printer::Service => vec![
            name,
            s("Type", "type determines how the Service is exposed."),
            s("Cluster-IP", "clusterIP is the IP address of the service."),
            s(
                "External-IP",
                "List of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            s(
                "Port(s)",
                "The list of ports that are exposed by this service.",
            ),
            age,
            w(
                "Selector",
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        Printer::Endpoints => vec![name, s("Endpoints", "Endpoints of the resource"), age],
        Printer::EndpointSlice => vec![
            name,
            s(
                "AddressType",
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            s(
                "Ports",
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            s(
                "Endpoints",
                "endpoints is a list of unique endpoints in this slice.",
            ),
            age,
        ],
        Printer::ConfigMap => vec![
            name,
            i("Data", "Data contains the configuration data."),
            age,
        ],
        Printer::Secret => vec![
            name,
            s(
                "Type",
                "Used to facilitate programmatic handling of secret data.",
            ),
            i("Data", "Data contains the secret data."),
            age,
        ],
        Printer::ServiceAccount => vec![
            name,
            i(
                "Secrets",
                "Secrets is a list of the secrets in the same namespace.",
            ),
            age,
        ],
        Printer::Event => vec![
            s("Last Seen", "Time when this Event was last observed."),
            s(
                "Type",
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            s(
                "Reason",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            s("Object", "The object that this event is about."),
            w("Subobject", "The subobject that this event is about."),
            w("Source", "The component reporting this event."),
            s(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
            w(
                "First Seen",
                "The time at which the event was first recorded.",
            ),
            col(
                "Count",
                "string",
                "",
                "The number of times this event has occurred.",
                1,
            ),
            col(
                "Name",
                "string",
                "name",
                "Name must be unique within a namespace.",
                1,
            ),
        ],
        Printer::Lease => vec![name, s("Holder", "The holder of the lease."), age],
        Printer::RoleBinding => vec![
            name,
            s(
                "Role",
                if rt.namespaced {
                    "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error."
                } else {
                    "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error."
                },
            ),
            age,
            w("Users", "Users in the roleBinding"),
            w("Groups", "Groups in the roleBinding"),
            w("ServiceAccounts", "ServiceAccounts in the roleBinding"),
        ],
        Printer::Deployment => vec![
            name,
            s("Ready", "Number of the pod with ready state"),
            i(
                "Up-to-date",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            i(
                "Available",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age,
            w("Containers", "Names of each container in the template."),
            w(
                "Images",
                "Images referenced by each container in the template.",
            ),
            w(
                "Selector",
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ],
        Printer::StatefulSet => vec![
            name,
            s("Ready", "Number of the pod with ready state"),
            age,
            w("Containers", "Names of each container in the template."),
            w(
                "Images",
                "Images referenced by each container in the template.",
            ),
        ],
        Printer::ControllerRevision => vec![
            name,
            s("Controller", "Controller of the object"),
            i(
                "Revision",
                "Revision indicates the revision of the state represented by Data.",
            ),
            age,
        ],
        Printer::ReplicaSet => vec![
            name,
            i("Desired", "Replicas is the number of desired replicas."),
            i(
                "Current",
                "Replicas is the most recently observed number of replicas.",
            ),
            i(
                "Ready",
                "The number of ready replicas for this replica set.",
            ),
            age,
            w("Containers", "Names of each container in the template."),
            w(
                "Images",
                "Images referenced by each container in the template.",
            ),
            w(
                "Selector",
                "Selector is a label query over pods that should match the replica count.",
            ),
        ],
        Printer::Job => vec![
            name,
            s("Status", "Status of the job."),
            s(
                "Completions",
                "The desired number of successfully finished pods the job should be run with.",
            ),
            s("Duration", "Time required to complete the job."),
            age,
            w("Containers", "Names of each container in the template."),
            w(
                "Images",
                "Images referenced by each container in the template.",
            ),
            w(
                "Selector",
                "A label query over pods that should match the pod count.",
            ),
        ],
        Printer::CertificateSigningRequest => vec![
            name,
            age,
            s(
                "SignerName",
                "Only use SignerName when you want to specify the signer name.",
            ),
            s(
                "Requestor",
                "Name of the user who requested the certificate.",
            ),
            s(
                "RequestedDuration",
                "Requested duration of the issued certificate.",
            ),
            s("Condition", "Status of the certificate signing request."),
        ],
        Printer::DaemonSet => vec![
            name,
            i(
                "Desired",
                "The total number of nodes that should be running the daemon pod.",
            ),
            i(
                "Current",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            i(
                "Ready",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            i(
                "Up-to-date",
                "The total number of nodes that are running updated daemon pod",
            ),
            i(
                "Available",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            s(
                "Node Selector",
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            age,
            w("Containers", "Names of each container in the template."),
            w(
                "Images",
                "Images referenced by each container in the template.",
            ),
            w(
                "Selector",
                "A label query over pods that are managed by the daemon set.",
            ),
        ],
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

fn int_at(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_i64().unwrap_or(0)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Human age of a timestamp, like kubectl prints it.
pub fn age(ts: &str, now: DateTime<Utc>) -> String {
    match parse_time(ts) {
        Some(t) => {
            let d = now.signed_duration_since(t);
            match d.to_std() {
                Ok(d) => rke2_apimachinery::duration::human_duration(d),
                // Clock skew between servers: kube-apiserver shows 0s.
                Err(_) => "0s".to_string(),
            }
        }
        None => "<unknown>".to_string(),
    }
}

fn map_len(v: &Value) -> i64 {
    v.as_object().map(|m| m.len() as i64).unwrap_or(0)
}

fn join_containers(template_spec: &Value, field: &str) -> String {
    template_spec["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c[field].as_str().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    if let Some(exprs) = sel["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str().unwrap_or("");
            let vals: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            match e["operator"].as_str().unwrap_or("") {
                "In" => parts.push(format!("{key} in ({})", vals.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", vals.join(","))),
                "Exists" => parts.push(key.to_string()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn map_selector_string(sel: &Value) -> String {
    match sel.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

fn node_roles(labels: &Value) -> String {
    let mut roles: Vec<String> = Vec::new();
    if let Some(m) = labels.as_object() {
        for (k, v) in m {
            if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                if !r.is_empty() {
                    roles.push(r.to_string());
                }
            } else if k == "kubernetes.io/role"
                && let Some(v) = v.as_str().filter(|v| !v.is_empty())
            {
                roles.push(v.to_string());
            }
        }
    }
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn node_address(obj: &Value, ty: &str) -> String {
    obj["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == ty))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("<none>")
        .to_string()
}

fn pod_status(obj: &Value) -> (String, String, String) {
    let status = &obj["status"];
    let containers = obj["spec"]["containers"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    let mut reason = status["reason"]
        .as_str()
        .or_else(|| status["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    let mut ready = 0;
    let mut restarts = 0;
    if let Some(cs) = status["containerStatuses"].as_array() {
        for c in cs.iter().rev() {
            restarts += c["restartCount"].as_i64().unwrap_or(0);
            if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
                reason = r.to_string();
            } else if let Some(r) = c["state"]["terminated"]["reason"].as_str() {
                reason = r.to_string();
            } else if c["ready"] == true && c["state"]["running"].is_object() {
                ready += 1;
            }
        }
    }
    if obj["metadata"]["deletionTimestamp"].is_string() {
        if status["reason"] == "NodeLost" {
            reason = "Unknown".into();
        } else if !matches!(status["phase"].as_str(), Some("Succeeded") | Some("Failed")) {
            reason = "Terminating".into();
        }
    }
    (
        format!("{ready}/{containers}"),
        reason,
        restarts.to_string(),
    )
}

fn service_ports(spec: &Value) -> String {
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let port = p["port"].as_i64().unwrap_or(0);
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) if np > 0 => format!("{port}:{np}/{proto}"),
                        _ => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

/// How many entries the ENDPOINTS and PORTS columns show before
/// ` + N more...` (upstream's printers use 3).
const LIST_MAX: usize = 3;

/// Upstream's `listWithMoreString`: the first entries, then ` + N more...`;
/// `empty` when there are none.
fn list_with_more(list: &[String], count: usize, empty: &str) -> String {
    if count > list.len() {
        format!("{} + {} more...", list.join(","), count - list.len())
    } else if list.is_empty() {
        empty.to_string()
    } else {
        list.join(",")
    }
}

/// The ENDPOINTS cell of an Endpoints object (upstream's
/// `formatEndpoints`): `ip:port` for each port of a subset, port by port;
/// bare IPs for a subset without ports; ready addresses only. No subsets
/// at all prints `<none>`; subsets with only not-ready addresses print an
/// empty cell, as upstream does.
fn endpoints_string(obj: &Value) -> String {
    let subsets = obj["subsets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut list: Vec<String> = Vec::new();
    let mut count = 0;
    for s in subsets {
        let addrs: Vec<&str> = s["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a["ip"].as_str().unwrap_or(""))
            .collect();
        let ports: Vec<i64> = s["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["port"].as_i64().unwrap_or(0))
            .collect();
        if ports.is_empty() {
            count += addrs.len();
            list.extend(
                addrs
                    .iter()
                    .take(LIST_MAX.saturating_sub(list.len()))
                    .map(|ip| ip.to_string()),
            );
            continue;
        }
        for port in ports {
            count += addrs.len();
            for ip in &addrs {
                if list.len() == LIST_MAX {
                    break;
                }
                // Go's net.JoinHostPort brackets IPv6 addresses.
                list.push(if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                });
            }
        }
    }
    if count > list.len() {
        format!("{} + {} more...", list.join(","), count - list.len())
    } else {
        list.join(",")
    }
}

/// The PORTS cell of an EndpointSlice (upstream's `formatDiscoveryPorts`):
/// each port's number, else its name, else `*`; `<unset>` when none.
fn slice_ports_string(obj: &Value) -> String {
    let ports = obj["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let list: Vec<String> = ports
        .iter()
        .take(LIST_MAX)
        .map(|p| match (p["port"].as_i64(), p["name"].as_str()) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.to_string(),
            (None, None) => "*".to_string(),
        })
        .collect();
    list_with_more(&list, ports.len(), "<unset>")
}

/// The ENDPOINTS cell of an EndpointSlice (upstream's
/// `formatDiscoveryEndpoints`): every address of every endpoint, ready or
/// not; `<unset>` when none.
fn slice_endpoints_string(obj: &Value) -> String {
    let addrs: Vec<&str> = obj["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
        .map(|a| a.as_str().unwrap_or(""))
        .collect();
    let list: Vec<String> = addrs.iter().take(LIST_MAX).map(|a| a.to_string()).collect();
    list_with_more(&list, addrs.len(), "<unset>")
}

/// A binding's subjects as kubectl shows them: users, groups and
/// service accounts (`namespace/name`); other kinds are not shown.
fn binding_subjects(obj: &Value) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for s in obj["subjects"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("").to_string();
        match s["kind"].as_str() {
            Some("User") => users.push(name),
            Some("Group") => groups.push(name),
            Some("ServiceAccount") => {
                sas.push(format!("{}/{name}", s["namespace"].as_str().unwrap_or("")))
            }
            _ => {}
        }
    }
    (users, groups, sas)
}

/// The cell of an `additionalPrinterColumns` column, as the CRD table
/// convertor makes it: a `date` becomes an age, numbers keep their type,
/// anything missing or of the wrong type is an empty cell.
fn column_cell(ty: &str, value: Option<&Value>, now: DateTime<Utc>) -> Value {
    let Some(v) = value else {
        return Value::Null;
    };
    match (ty, v) {
        ("date", Value::String(ts)) => {
            if DateTime::parse_from_rfc3339(ts).is_ok() {
                json!(age(ts, now))
            } else {
                json!("<invalid>")
            }
        }
        ("integer", Value::Number(n)) => match n.as_i64() {
            Some(i) => json!(i),
            None => n
                .as_f64()
                .filter(|f| f.fract() == 0.0)
                .map_or(Value::Null, |f| json!(f as i64)),
        },
        ("number", Value::Number(n)) => json!(n.as_f64()),
        ("boolean", Value::Bool(b)) => json!(b),
        ("string", Value::String(s)) => json!(s),
        // Upstream prints non-string values of a string column as JSON.
        ("string", other) => json!(other.to_string()),
        _ => Value::Null,
    }
}

/// The cells of one row.
pub fn cells(rt: &ResourceType, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(str_at(obj, &["metadata", "name"]));
    let created = str_at(obj, &["metadata", "creationTimestamp"]);
    let a = json!(age(created, now));
    let spec = &obj["spec"];
    let status = &obj["status"];
    match &rt.printer {
        // API aggregation (aggregator/mod.rs).
        Printer::ApiService => {
            let (service, available) = crate::aggregator::table_cells(obj);
            vec![name, json!(service), json!(available), a]
        }
        Printer::Ingress => {
            let mut v = vec![name];
            v.extend(crate::networking::ingress_cells(obj));
            v.push(a);
            v
        }
        Printer::IngressClass => {
            let mut v = vec![name];
            v.extend(crate::networking::ingress_class_cells(obj));
            v.push(a);
            v
        }
        Printer::CronJob => {
            let (mid, wide) = crate::batch::cells(obj, now);
            let mut v = vec![name];
            v.extend(mid);
            v.push(a);
            v.extend(wide);
            v
        }
        Printer::PersistentVolume | Printer::PersistentVolumeClaim => {
            let (cells, wide) = if rt.printer == Printer::PersistentVolume {
                crate::storage::pv_cells(obj)
            } else {
                crate::storage::pvc_cells(obj)
            };
            let mut v = vec![name];
            v.extend(cells);
            v.push(a);
            v.extend(wide);
            v
        }
        Printer::PodDisruptionBudget => {
            let mut v = vec![name];
            v.extend(crate::disruption::cells(obj, now));
            v.push(a);
            v
        }
        Printer::HorizontalPodAutoscaler => {
            let mut v = vec![name];
            v.extend(crate::autoscaling::cells(obj, now));
            v.push(a);
            v
        }
        Printer::ResourceQuota => {
            let (req, lim) = crate::quota::cells(obj);
            vec![name, a, req, lim]
        }
        Printer::StorageClass => {
            let (name, cells) = crate::storage::class_cells(obj);
            let mut v = vec![name];
            v.extend(cells);
            v.push(a);
            v
        }
        Printer::PriorityClass => {
            let mut v = vec![name];
            v.extend(crate::scheduling::cells(obj, a));
            v
        }
        Printer::Columns(extra) => {
            let mut out = vec![name];
            out.extend(
                extra
                    .iter()
                    .map(|c| column_cell(&c.type_, crate::jsonpath::first(obj, &c.json_path), now)),
            );
            out
        }
        Printer::Default => vec![name, json!(created)],
        Printer::Namespace => vec![name, json!(status["phase"].as_str().unwrap_or("Active")), a],
        Printer::Node => {
            let ready = status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
            let mut st = match ready.and_then(|c| c["status"].as_str()) {
                Some("True") => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if spec["unschedulable"] == true {
                st.push_str(",SchedulingDisabled");
            }
            let info = &status["nodeInfo"];
            vec![
                name,
                json!(st),
                json!(node_roles(&obj["metadata"]["labels"])),
                a,
                json!(info["kubeletVersion"].as_str().unwrap_or("")),
                json!(node_address(obj, "InternalIP")),
                json!(node_address(obj, "ExternalIP")),
                json!(info["osImage"].as_str().unwrap_or("")),
                json!(info["kernelVersion"].as_str().unwrap_or("")),
                json!(info["containerRuntimeVersion"].as_str().unwrap_or("")),
            ]
        }
        Printer::Pod => {
            let (ready, reason, restarts) = pod_status(obj);
            let or_none = |s: &str| {
                if s.is_empty() {
                    "<none>".to_string()
                } else {
                    s.to_string()
                }
            };
            vec![
                name,
                json!(ready),
                json!(reason),
                json!(restarts),
                a,
                json!(or_none(str_at(status, &["podIP"]))),
                json!(or_none(str_at(spec, &["nodeName"]))),
                json!(or_none(str_at(status, &["nominatedNodeName"]))),
                json!("<none>"),
            ]
        }
        Printer::Service => {
            let ty = spec["type"].as_str().unwrap_or("ClusterIP");
            let ext = match spec["externalIPs"].as_array() {
                Some(ips) if !ips.is_empty() => ips
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                _ if ty == "LoadBalancer" => "<pending>".into(),
                _ => "<none>".into(),
            };
            vec![
                name,
                json!(ty),
                json!(spec["clusterIP"].as_str().unwrap_or("<none>")),
                json!(ext),
                json!(service_ports(spec)),
                a,
                json!(map_selector_string(&spec["selector"])),
            ]
        }
        Printer::Endpoints => vec![name, json!(endpoints_string(obj)), a],
        Printer::EndpointSlice => vec![
            name,
            json!(obj["addressType"].as_str().unwrap_or("")),
            json!(slice_ports_string(obj)),
            json!(slice_endpoints_string(obj)),
            a,
        ],
        Printer::ConfigMap => vec![
            name,
            json!(map_len(&obj["data"]) + map_len(&obj["binaryData"])),
            a,
        ],
        Printer::Secret => vec![
            name,
            json!(obj["type"].as_str().unwrap_or("Opaque")),
            json!(map_len(&obj["data"])),
            a,
        ],
        Printer::ServiceAccount => vec![
            name,
            json!(obj["secrets"].as_array().map(|s| s.len()).unwrap_or(0)),
            a,
        ],
        Printer::Event => {
            let last = obj["lastTimestamp"]
                .as_str()
                .or_else(|| obj["eventTime"].as_str())
                .unwrap_or(created);
            let first = obj["firstTimestamp"].as_str().unwrap_or(last);
            let io = &obj["involvedObject"];
            let object = format!(
                "{}/{}",
                io["kind"].as_str().unwrap_or("").to_lowercase(),
                io["name"].as_str().unwrap_or("")
            );
            let source = obj["source"]["component"]
                .as_str()
                .or_else(|| obj["reportingComponent"].as_str())
                .unwrap_or("");
            vec![
                json!(age(last, now)),
                json!(obj["type"].as_str().unwrap_or("")),
                json!(obj["reason"].as_str().unwrap_or("")),
                json!(object),
                json!(io["fieldPath"].as_str().unwrap_or("")),
                json!(source),
                json!(obj["message"].as_str().unwrap_or("")),
                json!(age(first, now)),
                json!(obj["count"].as_i64().unwrap_or(1).to_string()),
                name,
            ]
        }
        Printer::RoleBinding => {
            let role_ref = &obj["roleRef"];
            let (users, groups, sas) = binding_subjects(obj);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    role_ref["kind"].as_str().unwrap_or(""),
                    role_ref["name"].as_str().unwrap_or("")
                )),
                a,
                json!(users.join(", ")),
                json!(groups.join(", ")),
                json!(sas.join(", ")),
            ]
        }
        Printer::Lease => vec![
            name,
            json!(spec["holderIdentity"].as_str().unwrap_or("")),
            a,
        ],
        Printer::Deployment => {
            let tspec = &spec["template"]["spec"];
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int_at(status, &["readyReplicas"]),
                    spec["replicas"].as_i64().unwrap_or(1)
                )),
                json!(int_at(status, &["updatedReplicas"])),
                json!(int_at(status, &["availableReplicas"])),
                a,
                json!(join_containers(tspec, "name")),
                json!(join_containers(tspec, "image")),
                json!(selector_string(&spec["selector"])),
            ]
        }
        Printer::StatefulSet => {
            let tspec = &spec["template"]["spec"];
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int_at(status, &["readyReplicas"]),
                    spec["replicas"].as_i64().unwrap_or(1)
                )),
                a,
                json!(join_containers(tspec, "name")),
                json!(join_containers(tspec, "image")),
            ]
        }
        Printer::ControllerRevision => {
            // kubectl's `formatResourceName`: `kind.group/name`, lower case.
            let owner = obj["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
                .map(|r| {
                    let group = str_at(r, &["apiVersion"])
                        .rsplit_once('/')
                        .map(|(g, _)| g)
                        .unwrap_or("");
                    let kind = str_at(r, &["kind"]).to_lowercase();
                    let kind = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{kind}/{}", str_at(r, &["name"]))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(owner), json!(int_at(obj, &["revision"])), a]
        }
        Printer::ReplicaSet => {
            let tspec = &spec["template"]["spec"];
            vec![
                name,
                json!(spec["replicas"].as_i64().unwrap_or(1)),
                json!(int_at(status, &["replicas"])),
                json!(int_at(status, &["readyReplicas"])),
                a,
                json!(join_containers(tspec, "name")),
                json!(join_containers(tspec, "image")),
                json!(selector_string(&spec["selector"])),
            ]
        }
        Printer::CertificateSigningRequest => {
            let signer = match str_at(spec, &["signerName"]) {
                "" => "<none>",
                s => s,
            };
            let requested = match spec["expirationSeconds"].as_i64() {
                Some(secs) => rke2_apimachinery::duration::human_duration_secs(secs),
                None => "<none>".to_string(),
            };
            vec![
                name,
                a,
                json!(signer),
                json!(str_at(spec, &["username"])),
                json!(requested),
                json!(crate::csr::condition_summary(obj)),
            ]
        }
        Printer::Job => {
            let tspec = &spec["template"]["spec"];
            let conds = status["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let st = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if !obj["metadata"]["deletionTimestamp"].is_null() {
                "Terminating"
            } else if has("Suspended") {
                "Suspended"
            } else if has("FailureTarget") {
                // The interim conditions, while its pods are stopped.
                "FailureTarget"
            } else if has("SuccessCriteriaMet") {
                "SuccessCriteriaMet"
            } else {
                "Running"
            };
            let completions = spec["completions"].as_i64().unwrap_or(1);
            let duration = match (
                status["startTime"].as_str(),
                status["completionTime"].as_str(),
            ) {
                (Some(s), Some(c)) => match (parse_time(s), parse_time(c)) {
                    (Some(a), Some(b)) => rke2_apimachinery::duration::human_duration(
                        b.signed_duration_since(a).to_std().unwrap_or_default(),
                    ),
                    _ => String::new(),
                },
                (Some(s), None) => age(s, now),
                _ => String::new(),
            };
            vec![
                name,
                json!(st),
                json!(format!("{}/{completions}", int_at(status, &["succeeded"]))),
                json!(duration),
                a,
                json!(join_containers(tspec, "name")),
                json!(join_containers(tspec, "image")),
                json!(selector_string(&spec["selector"])),
            ]
        }
        Printer::DaemonSet => {
            let tspec = &spec["template"]["spec"];
            vec![
                name,
                json!(int_at(status, &["desiredNumberScheduled"])),
                json!(int_at(status, &["currentNumberScheduled"])),
                json!(int_at(status, &["numberReady"])),
                json!(int_at(status, &["updatedNumberScheduled"])),
                json!(int_at(status, &["numberAvailable"])),
                json!(map_selector_string(&tspec["nodeSelector"])),
                a,
                json!(join_containers(tspec, "name")),
                json!(join_containers(tspec, "image")),
                json!(selector_string(&spec["selector"])),
            ]
        }
    }
}

/// The `object` of a row.
pub fn row_object(obj: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(obj.clone()),
        IncludeObject::Metadata => Some(partial_metadata(obj)),
    }
}

/// The PartialObjectMetadata form of an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"].clone(),
    })
}

/// A whole Table for a list of objects.
pub fn table(
    rt: &ResourceType,
    objs: &[Value],
    list_meta: Value,
    include: IncludeObject,
    with_columns: bool,
) -> Value {
    let now = Utc::now();
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(rt, o, now)});
            if let Some(obj) = row_object(o, include) {
                row["object"] = obj;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": if with_columns { Value::Array(columns(rt)) } else { Value::Null },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn node_row_reads_ready_condition_and_roles() {
        let rt = find("", "v1", "nodes").unwrap();
        let node = json!({
            "metadata": {"name": "s1", "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {
                "node-role.kubernetes.io/master": "true",
                "node-role.kubernetes.io/control-plane": "true",
                "node-role.kubernetes.io/etcd": "true"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.35.0+rke2r1"},
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
        });
        let now = parse_time("2024-01-01T00:01:30Z").unwrap();
        let c = cells(rt, &node, now);
        assert_eq!(c[1], "Ready");
        assert_eq!(c[2], "control-plane,etcd,master");
        assert_eq!(c[3], "90s");
        assert_eq!(c[5], "10.0.0.1");
        assert_eq!(columns(rt).len(), c.len());
    }

    #[test]
    fn job_status_shows_interim_conditions() {
        let rt = find("batch", "v1", "jobs").unwrap();
        let now = Utc::now();
        let with = |conds: Value, deleting: bool| {
            let mut job = json!({"metadata": {"name": "j", "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"completions": 3}, "status": {"conditions": conds}});
            if deleting {
                job["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:01Z");
            }
            cells(rt, &job, now)[1].clone()
        };
        let t = |ty: &str| json!({"type": ty, "status": "True"});
        assert_eq!(with(json!([]), false), "Running");
        assert_eq!(with(json!([t("FailureTarget")]), false), "FailureTarget");
        assert_eq!(
            with(json!([t("SuccessCriteriaMet")]), false),
            "SuccessCriteriaMet"
        );
        assert_eq!(
            with(json!([t("SuccessCriteriaMet"), t("Complete")]), false),
            "Complete"
        );
        assert_eq!(
            with(json!([t("FailureTarget"), t("Failed")]), true),
            "Failed"
        );
        assert_eq!(with(json!([t("FailureTarget")]), true), "Terminating");
    }

    #[test]
    fn every_printer_has_as_many_cells_as_columns() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        for rt in crate::registry::builtin() {
            assert_eq!(
                columns(rt).len(),
                cells(rt, &obj, Utc::now()).len(),
                "{}",
                rt.plural
            );
        }
    }

    #[test]
    fn binding_rows_show_role_and_subjects() {
        let rt = find("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
        let rb = json!({
            "metadata": {"name": "b", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [
                {"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"},
                {"kind": "Group", "name": "devs"},
                {"kind": "ServiceAccount", "name": "default", "namespace": "ns1"}]
        });
        let now = parse_time("2024-01-01T00:00:10Z").unwrap();
        assert_eq!(
            cells(rt, &rb, now),
            vec![
                json!("b"),
                json!("ClusterRole/view"),
                json!("10s"),
                json!("alice, bob"),
                json!("devs"),
                json!("ns1/default")
            ]
        );
        let cols = columns(rt);
        let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["Name", "Role", "Age", "Users", "Groups", "ServiceAccounts"]
        );
    }

    #[test]
    fn endpoint_slice_rows_list_ports_and_addresses_as_upstream() {
        let rt = find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        let now = parse_time("2024-01-01T00:00:10Z").unwrap();
        let slice = json!({
            "metadata": {"name": "web-abcde", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "named"}, {}, {"port": 9}],
            "endpoints": [{"addresses": ["10.42.0.5"]}, {"addresses": ["10.42.0.6"]},
                          {"addresses": ["10.42.0.7"]}, {"addresses": ["10.42.0.8"]},
                          {"addresses": ["10.42.0.9"]}]
        });
        assert_eq!(
            cells(rt, &slice, now),
            vec![
                json!("web-abcde"),
                json!("IPv4"),
                json!("8080,named,* + 1 more..."),
                json!("10.42.0.5,10.42.0.6,10.42.0.7 + 2 more..."),
                json!("10s")
            ]
        );
        let empty = json!({"metadata": {"name": "p", "creationTimestamp": "2024-01-01T00:00:00Z"},
                           "addressType": "IPv4", "ports": [], "endpoints": []});
        let c = cells(rt, &empty, now);
        assert_eq!(
            (c[2].as_str(), c[3].as_str()),
            (Some("<unset>"), Some("<unset>"))
        );
        let names: Vec<String> = columns(rt)
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["Name", "AddressType", "Ports", "Endpoints", "Age"]);
    }

    #[test]
    fn endpoints_cells_go_port_by_port_and_show_none_without_subsets() {
        let ep = json!({"subsets": [{"addresses": [{"ip": "1.1.1.1"}, {"ip": "1.1.1.2"}],
                                     "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            endpoints_string(&ep),
            "1.1.1.1:80,1.1.1.2:80,1.1.1.1:443 + 1 more..."
        );
        assert_eq!(endpoints_string(&json!({})), "<none>");
        let unready = json!({"subsets": [{"notReadyAddresses": [{"ip": "1.1.1.1"}], "ports": [{"port": 80}]}]});
        assert_eq!(endpoints_string(&unready), "");
    }

    #[test]
    fn endpoints_truncate_after_three() {
        let ep = json!({"subsets": [{"addresses": [{"ip": "1.1.1.1"}, {"ip": "1.1.1.2"}, {"ip": "1.1.1.3"}, {"ip": "1.1.1.4"}], "ports": [{"port": 6443}]}]});
        assert_eq!(
            endpoints_string(&ep),
            "1.1.1.1:6443,1.1.1.2:6443,1.1.1.3:6443 + 1 more..."
        );
    }
}
