#!/usr/bin/env python3
"""Generate crates/kubeproto/src/generated.rs.

Reads the prost types of the `k8s-pb` crate (field names, protobuf kinds,
message types) and the JSON names / required-ness of the `k8s-openapi`
crate (v1_35), both from the local cargo registry, and writes one
`fn <module>_<Type>(&pb) -> Value` per reachable message plus the
(apiVersion, kind) dispatch table.

Usage: python3 crates/kubeproto/gen/gen.py   (then `cargo fmt -p rke2-kubeproto`)
"""

import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "src", "generated.rs")
REG = os.path.expanduser("~/.cargo/registry/src")
PB = glob.glob(os.path.join(REG, "*", "k8s-pb-0.9.0", "src"))[0]
OA = glob.glob(os.path.join(REG, "*", "k8s-openapi-0.29.0", "src", "v1_35"))[0]

# Root kinds: (pb module, struct). apiVersion/kind come from k8s-pb's Resource impls.
ROOTS = [
    ("api/core/v1", k)
    for k in [
        "Binding", "ConfigMap", "Endpoints", "Event", "LimitRange", "Namespace", "Node",
        "PersistentVolume", "PersistentVolumeClaim", "Pod", "PodTemplate",
        "ReplicationController", "ResourceQuota", "Secret", "Service", "ServiceAccount",
    ]
] + [
    ("api/apps/v1", k) for k in ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "ControllerRevision"]
] + [
    ("api/batch/v1", "Job"), ("api/batch/v1", "CronJob"),
    ("api/coordination/v1", "Lease"),
    ("api/events/v1", "Event"),
    ("api/rbac/v1", "Role"), ("api/rbac/v1", "ClusterRole"),
    ("api/rbac/v1", "RoleBinding"), ("api/rbac/v1", "ClusterRoleBinding"),
    ("api/networking/v1", "Ingress"), ("api/networking/v1", "IngressClass"),
    ("api/networking/v1", "NetworkPolicy"),
    ("api/policy/v1", "PodDisruptionBudget"), ("api/policy/v1", "Eviction"),
    ("api/scheduling/v1", "PriorityClass"),
    ("api/discovery/v1", "EndpointSlice"),
    ("api/authentication/v1", "TokenRequest"), ("api/authentication/v1", "TokenReview"),
    ("api/authorization/v1", "SubjectAccessReview"),
    ("api/authorization/v1", "SelfSubjectAccessReview"),
    ("api/authorization/v1", "SelfSubjectRulesReview"), ("api/authorization/v1", "LocalSubjectAccessReview"),
    ("api/certificates/v1", "CertificateSigningRequest"),
    ("api/storage/v1", "StorageClass"),
    ("api/autoscaling/v2", "HorizontalPodAutoscaler"), ("api/autoscaling/v1", "HorizontalPodAutoscaler"),
]

# Go pointer scalars (`*bool`, `*int32`, `*string`, ...) whose zero value is
# meaningful and must be emitted. Every other optional scalar follows Go's
# `omitempty` on a value field: "" / 0 / false are omitted (gogo-protobuf
# always writes value fields, so kubectl's bodies carry lots of zeros).
POINTERS = set("""
ObjectMeta.deletionGracePeriodSeconds OwnerReference.controller OwnerReference.blockOwnerDeletion
ConfigMap.immutable Secret.immutable ServiceAccount.automountServiceAccountToken
KeyToPath.mode ConfigMapVolumeSource.defaultMode ConfigMapVolumeSource.optional
SecretVolumeSource.defaultMode SecretVolumeSource.optional ProjectedVolumeSource.defaultMode
DownwardAPIVolumeSource.defaultMode DownwardAPIVolumeFile.mode ConfigMapProjection.optional
SecretProjection.optional ServiceAccountTokenProjection.expirationSeconds
ClusterTrustBundleProjection.name ClusterTrustBundleProjection.signerName ClusterTrustBundleProjection.optional
HostPathVolumeSource.type PersistentVolumeClaimSpec.storageClassName PersistentVolumeClaimSpec.volumeMode
PersistentVolumeClaimSpec.volumeAttributesClassName PersistentVolumeSpec.volumeMode
PersistentVolumeSpec.volumeAttributesClassName
ConfigMapKeySelector.optional SecretKeySelector.optional ConfigMapEnvSource.optional
SecretEnvSource.optional FileKeySelector.optional
Container.restartPolicy EphemeralContainer.restartPolicy Probe.terminationGracePeriodSeconds GRPCAction.service
Lifecycle.stopSignal
SecurityContext.privileged SecurityContext.runAsUser SecurityContext.runAsGroup SecurityContext.runAsNonRoot
SecurityContext.readOnlyRootFilesystem SecurityContext.allowPrivilegeEscalation SecurityContext.procMount
SeccompProfile.localhostProfile AppArmorProfile.localhostProfile
WindowsSecurityContextOptions.gmsaCredentialSpecName WindowsSecurityContextOptions.gmsaCredentialSpec
WindowsSecurityContextOptions.runAsUserName WindowsSecurityContextOptions.hostProcess
PodSecurityContext.runAsUser PodSecurityContext.runAsGroup PodSecurityContext.runAsNonRoot
PodSecurityContext.fsGroup PodSecurityContext.fsGroupChangePolicy
PodSecurityContext.supplementalGroupsPolicy PodSecurityContext.seLinuxChangePolicy
PodSpec.terminationGracePeriodSeconds PodSpec.activeDeadlineSeconds PodSpec.automountServiceAccountToken
PodSpec.shareProcessNamespace PodSpec.priority PodSpec.enableServiceLinks PodSpec.preemptionPolicy
PodSpec.setHostnameAsFQDN PodSpec.hostUsers PodSpec.runtimeClassName PodSpec.hostnameOverride
Toleration.tolerationSeconds TopologySpreadConstraint.minDomains
TopologySpreadConstraint.nodeAffinityPolicy TopologySpreadConstraint.nodeTaintsPolicy
VolumeMount.mountPropagation VolumeMount.recursiveReadOnly
PodResourceClaim.resourceClaimName PodResourceClaim.resourceClaimTemplateName
CSIVolumeSource.readOnly CSIVolumeSource.fsType PodDNSConfigOption.value
ISCSIVolumeSource.initiatorName ISCSIPersistentVolumeSource.initiatorName
ServiceSpec.allocateLoadBalancerNodePorts ServiceSpec.loadBalancerClass ServiceSpec.internalTrafficPolicy
ServiceSpec.ipFamilyPolicy ServiceSpec.trafficDistribution ServicePort.appProtocol
ClientIPConfig.timeoutSeconds EndpointPort.appProtocol EndpointAddress.nodeName
DeploymentSpec.replicas DeploymentSpec.revisionHistoryLimit DeploymentSpec.progressDeadlineSeconds
ReplicaSetSpec.replicas ReplicationControllerSpec.replicas StatefulSetSpec.replicas
StatefulSetSpec.revisionHistoryLimit RollingUpdateStatefulSetStrategy.partition
DaemonSetSpec.revisionHistoryLimit
JobSpec.parallelism JobSpec.completions JobSpec.activeDeadlineSeconds JobSpec.backoffLimit
JobSpec.backoffLimitPerIndex JobSpec.maxFailedIndexes JobSpec.manualSelector
JobSpec.ttlSecondsAfterFinished JobSpec.completionMode JobSpec.suspend JobSpec.podReplacementPolicy
JobSpec.managedBy PodFailurePolicyOnExitCodesRequirement.containerName
CronJobSpec.timeZone CronJobSpec.startingDeadlineSeconds CronJobSpec.suspend
CronJobSpec.successfulJobsHistoryLimit CronJobSpec.failedJobsHistoryLimit
LeaseSpec.holderIdentity LeaseSpec.leaseDurationSeconds LeaseSpec.leaseTransitions
LeaseSpec.strategy LeaseSpec.preferredHolder
IngressSpec.ingressClassName HTTPIngressPath.pathType IngressClassParametersReference.apiGroup
IngressClassParametersReference.scope IngressClassParametersReference.namespace
TypedLocalObjectReference.apiGroup TypedObjectReference.apiGroup TypedObjectReference.namespace
NetworkPolicyPort.protocol NetworkPolicyPort.endPort
PodDisruptionBudgetSpec.unhealthyPodEvictionPolicy
PriorityClass.preemptionPolicy
EndpointSlice.addressType Endpoint.hostname Endpoint.nodeName Endpoint.zone
EndpointConditions.ready EndpointConditions.serving EndpointConditions.terminating
EndpointPort.name EndpointPort.protocol EndpointPort.port
TokenRequestSpec.expirationSeconds
CertificateSigningRequestSpec.expirationSeconds
StorageClass.allowVolumeExpansion StorageClass.reclaimPolicy StorageClass.volumeBindingMode
DeleteOptions.gracePeriodSeconds DeleteOptions.orphanDependents DeleteOptions.propagationPolicy
DeleteOptions.ignoreStoreReadErrorWithClusterBreakingPotential
Event.series EventSeries.count
HorizontalPodAutoscalerSpec.minReplicas HorizontalPodAutoscalerSpec.targetCPUUtilizationPercentage
HorizontalPodAutoscalerStatus.observedGeneration HorizontalPodAutoscalerStatus.currentCPUUtilizationPercentage
HPAScalingRules.stabilizationWindowSeconds HPAScalingRules.selectPolicy
MetricTarget.averageUtilization MetricValueStatus.averageUtilization
""".split())

# Subresource kinds without a k8s-pb Resource impl.
EXTRA_RESOURCES = {
    ("api/core/v1", "Binding"): ("v1", "Binding"),
    ("api/policy/v1", "Eviction"): ("policy/v1", "Eviction"),
    ("api/authentication/v1", "TokenRequest"): ("authentication.k8s.io/v1", "TokenRequest"),
}

# Converted but dispatched by hand in lib.rs (any apiVersion).
EXTRA_FNS = [("apimachinery/pkg/apis/meta/v1", "DeleteOptions")]

SPECIAL = {
    ("apimachinery/pkg/apis/meta/v1", "Time"): "h::time",
    ("apimachinery/pkg/apis/meta/v1", "MicroTime"): "h::micro_time",
    ("apimachinery/pkg/apis/meta/v1", "Duration"): "h::duration",
    ("apimachinery/pkg/apis/meta/v1", "FieldsV1"): "h::fields_v1",
    ("apimachinery/pkg/api/resource", "Quantity"): "h::quantity",
    ("apimachinery/pkg/util/intstr", "IntOrString"): "h::int_or_string",
    ("apimachinery/pkg/runtime", "RawExtension"): "h::raw_extension",
}


def strip_comments(text):
    return "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))


def parse_pb():
    """module -> {struct: [field dict]}, plus (module, struct) -> (apiVersion, kind)."""
    structs, resources = {}, {}
    for path in glob.glob(os.path.join(PB, "**", "mod.rs"), recursive=True):
        mod = os.path.relpath(os.path.dirname(path), PB)
        text = strip_comments(open(path).read())
        for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
            name, body = m.group(1), m.group(2)
            fields = []
            parts = re.split(r"#\[prost\(", body)[1:]
            for p in parts:
                attr, rest = p.split(")]", 1)
                fm = re.match(r"\s*pub\s+((?:r#)?\w+)\s*:\s*(.*)", rest, re.S)
                fname, ty = fm.group(1), re.sub(r"\s+", "", fm.group(2)).rstrip(",")
                kind = attr.split(",")[0].split(" =")[0].strip()
                label = "repeated" if "repeated" in attr else "optional"
                mapv = None
                if kind.startswith("btree_map"):
                    mapv = re.search(r'"string, (\w+)"', attr).group(1)
                    label = "map"
                    kind = mapv
                msg = None
                if kind == "message":
                    inner = ty
                    for w in ["::core::option::Option<", "::prost::alloc::vec::Vec<",
                              "::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,"]:
                        if inner.startswith(w):
                            inner = inner[len(w):]
                    inner = inner.rstrip(">,")
                    msg = resolve(mod, inner)
                fields.append(dict(name=fname, kind=kind, label=label, msg=msg))
            structs.setdefault(mod, {})[name] = fields
        for m in re.finditer(
            r'impl crate::Resource for (\w+) \{\s*const API_VERSION: &\'static str = "([^"]+)";'
            r'.*?const KIND: &\'static str = "([^"]+)";', text, re.S):
            resources[(mod, m.group(1))] = (m.group(2), m.group(3))
    return structs, resources


def resolve(mod, ty):
    parts = ty.split("::")
    if len(parts) == 1:
        return (mod, ty)
    base = mod.split("/")
    while parts[0] == "super":
        base = base[:-1]
        parts = parts[1:]
    return ("/".join(base + parts[:-1]), parts[-1])


def parse_oa():
    """(module, struct) -> {norm(rust field): (json, required)}"""
    out = {}
    for path in glob.glob(os.path.join(OA, "**", "*.rs"), recursive=True):
        mod = os.path.relpath(os.path.dirname(path), OA)
        text = open(path).read()
        sm = re.search(r"pub struct (\w+) \{(.*?)\n\}", text, re.S)
        if not sm:
            continue
        fields = {}
        types = dict(re.findall(r"pub (\w+): (.*),$", sm.group(2), re.M))
        for js, key in re.findall(r'"([^"]+)" => Field::Key_(\w+)', text):
            ty = types.get(key, "")
            fields[norm(key)] = (js, not ty.startswith("Option<"))
        out[(mod, sm.group(1).lower())] = (sm.group(1), fields)
    return out


def norm(n):
    return n.replace("r#", "").replace("_", "").lower()


def fn_name(key):
    mod, name = key
    return mod.replace("apimachinery/pkg/apis/", "").replace("apimachinery/pkg/", "").replace(
        "api/", "").replace("/", "_") + "_" + name


def rust_path(key):
    mod, name = key
    return "pb::" + mod.replace("/", "::") + "::" + name


def main():
    structs, resources = parse_pb()
    resources.update(EXTRA_RESOURCES)
    oa = parse_oa()
    done, queue, out, warns = set(), [], [], []

    def want(key):
        if key in SPECIAL or key in done:
            return
        done.add(key)
        queue.append(key)

    inline_parent = {}

    def oa_of(key):
        """(Go type name, JSON fields) of a pb type; an inlined type borrows its parent's."""
        if (key[0], key[1].lower()) not in oa and key in inline_parent:
            return oa_of(inline_parent[key])
        return oa.get((key[0], key[1].lower()), (key[1], {}))

    def conv(key):
        """Expression of a fn(&T) -> Value (or Option<Value> for specials)."""
        if key in SPECIAL:
            return SPECIAL[key]
        want(key)
        return fn_name(key)

    for r in ROOTS + EXTRA_FNS:
        want(r)
    while queue:
        key = queue.pop(0)
        mod, name = key
        fields = structs[mod][name]
        goname, oaf = oa_of(key)
        body = []
        if name == "ExtraValue" or (not oaf and [f["name"] for f in fields] == ["items"]):
            out.append(f"pub(crate) fn {fn_name(key)}(m: &{rust_path(key)}) -> Value {{\n"
                       f"    Value::from(m.items.clone())\n}}\n")
            continue
        if not oaf:
            warns.append(f"no k8s-openapi type for {key}")
        for f in fields:
            n = norm(f["name"])
            rf = "m." + f["name"]
            if n not in oaf:
                # Go embedded struct (json:",inline")?
                if f["kind"] == "message" and f["label"] == "optional" and f["msg"] not in SPECIAL:
                    sub = structs[f["msg"][0]][f["msg"][1]]
                    if sub and all(norm(s["name"]) in oaf for s in sub):
                        inline_parent[f["msg"]] = key
                        body.append(f"    h::inline(&mut o, {rf}.as_ref().map({conv(f['msg'])}));")
                        continue
                warns.append(f"skip {name}.{f['name']}")
                body.append(f"    // skipped: {f['name']} (not in the JSON schema)")
                continue
            js, req = oaf[n]
            qual = f"{goname}.{js}"
            mode = "h::Mode::Req" if req else ("h::Mode::Ptr" if qual in POINTERS else "h::Mode::Omit")
            k, lab = f["kind"], f["label"]
            if lab == "optional":
                if k == "message":
                    c = conv(f["msg"])
                    if f["msg"] in SPECIAL:
                        body.append(f'    h::special(&mut o, "{js}", {rf}.as_ref(), {c}, {mode});')
                    else:
                        body.append(f'    h::msg(&mut o, "{js}", {rf}.as_ref(), {c}, {mode});')
                elif k == "bytes":
                    body.append(f'    h::bytes(&mut o, "{js}", &{rf}, {mode});')
                else:
                    body.append(f'    h::scalar(&mut o, "{js}", &{rf}, {mode});')
            elif lab == "repeated":
                if k == "message":
                    c = conv(f["msg"])
                    if f["msg"] in SPECIAL:
                        c = f"|x| {c}(x).unwrap_or(Value::Null)"
                    body.append(f'    h::list(&mut o, "{js}", &{rf}, {c}, {mode});')
                elif k == "bytes":
                    body.append(f'    h::list(&mut o, "{js}", &{rf}, |x| h::b64(x), {mode});')
                else:
                    body.append(f'    h::list(&mut o, "{js}", &{rf}, |x| Value::from(x.clone()), {mode});')
            else:  # map
                if k == "message":
                    c = conv(f["msg"])
                    if f["msg"] in SPECIAL:
                        c = f"|x| {c}(x).unwrap_or(Value::Null)"
                    body.append(f'    h::map(&mut o, "{js}", &{rf}, {c}, {mode});')
                elif k == "bytes":
                    body.append(f'    h::map(&mut o, "{js}", &{rf}, |x| h::b64(x), {mode});')
                else:
                    body.append(f'    h::map(&mut o, "{js}", &{rf}, |x| Value::from(x.clone()), {mode});')
        out.append(
            f"pub(crate) fn {fn_name(key)}(m: &{rust_path(key)}) -> Value {{\n"
            f"    let mut o = Map::new();\n" + "\n".join(body) + "\n    Value::Object(o)\n}\n")

    disp = []
    for r in ROOTS:
        av, kind = resources[r]
        disp.append(f'        ("{av}", "{kind}") => h::root::<{rust_path(r)}>(raw, "{av}", "{kind}", {fn_name(r)}),')
    sup = "\n".join(f'    ("{resources[r][0]}", "{resources[r][1]}"),' for r in ROOTS)
    code = (
        "// @generated by crates/kubeproto/gen/gen.py from k8s-pb 0.9 and k8s-openapi 0.29 (v1_35).\n"
        "// Do not edit by hand: change gen.py and re-run it.\n"
        "#![allow(non_snake_case, clippy::all)]\n\n"
        "use crate::helpers as h;\nuse crate::ProtoError;\nuse k8s_pb as pb;\nuse serde_json::{Map, Value};\n\n"
        "/// (apiVersion, kind) pairs understood by [`dispatch`].\n"
        f"pub(crate) const SUPPORTED: &[(&str, &str)] = &[\n{sup}\n];\n\n"
        "/// Decodes `raw` as the prost type for (apiVersion, kind); `None` if unsupported.\n"
        "pub(crate) fn dispatch(api_version: &str, kind: &str, raw: &[u8]) -> Option<Result<Value, ProtoError>> {\n"
        "    Some(match (api_version, kind) {\n" + "\n".join(disp) +
        "\n        _ => return None,\n    })\n}\n\n" + "\n".join(out))
    open(OUT, "w").write(code)
    for w in warns:
        print("warning:", w, file=sys.stderr)


main()
