"""ARM JSON of stored resources: managed clusters, agent pools, operations, features and providers."""

from __future__ import annotations

import base64
import hashlib
import json

from trustedlaunch.control.boot_packages import GRUB_PACKAGE, SHIM_PACKAGE
from trustedlaunch.control.cluster_pki import DEFAULT_SERVICE_CIDR
from trustedlaunch.control.cluster_planes import current_kubernetes_version, hosted_credential
from trustedlaunch.control.kubeconfig import ApiServer
from trustedlaunch.control.limits import (
    DEFAULT_KUBERNETES_VERSION,
    DEFAULT_MAX_PODS,
    MAX_AGENT_POOLS,
    kubernetes_upgrades,
    parse_kubernetes_version,
    running_kubernetes_version,
)
from trustedlaunch.control.node_health import health_state, power_state
from trustedlaunch.control.node_image_upgrades import UpgradeProfile
from trustedlaunch.control.records import (
    AgentPool,
    FeatureRegistration,
    ManagedCluster,
    Node,
    Operation,
    ProviderRegistration,
    ResourceGroup,
)
from trustedlaunch.control.resource_id import ResourceId
from trustedlaunch.control.resources import PROVIDER
from trustedlaunch.control.timeutil import iso
from trustedlaunch.node.kubelet import NODE_ADDRESS

UPGRADE_PROFILE_TYPE = "Microsoft.ContainerService/managedClusters/agentPools/upgradeProfiles"
POD_CIDR = "10.244.0.0/16"  # the nodes' pod ranges (node.kubelet.DEFAULT_POD_CIDR) lie in it

JsonObject = dict[str, object]


def entity_tag(view: JsonObject) -> str:
    """The eTag of a resource's JSON `view`: a digest of its content, so it changes whenever the resource
    does (also when the reconciler moves it), and a request's If-Match with an older one is refused."""
    digest = hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


def node_resource_group(cluster: ManagedCluster) -> str:
    """The resource group AKS would keep the cluster's VMs in (`MC_{group}_{cluster}_{location}`)."""
    return f"MC_{ResourceId.of(cluster).resource_group}_{cluster.display_name}_{cluster.location}"


def cluster_json(cluster: ManagedCluster) -> JsonObject:
    """A managed cluster as `GET .../managedClusters/{name}` returns it, with its `eTag`."""
    properties: JsonObject = {
        "provisioningState": cluster.provisioning_state,
        "powerState": {"code": cluster.power_state},
        "maxAgentPools": MAX_AGENT_POOLS,
        "kubernetesVersion": cluster.kubernetes_version,
        "currentKubernetesVersion": current_kubernetes_version(cluster),
        "dnsPrefix": cluster.dns_prefix,
        "fqdn": cluster.fqdn,
        "nodeResourceGroup": node_resource_group(cluster),
        "agentPoolProfiles": [{"name": pool.name, **pool_properties(pool)} for pool in cluster.agent_pools],
        "addonProfiles": {"aciConnectorLinux": {"enabled": cluster.virtual_nodes_enabled}},
        "azurePortalFQDN": f"{cluster.dns_prefix}.portal.hcp.{cluster.location}.trustedlaunch.internal",
        "enableRBAC": True,  # the hosted kube-apiserver authorizes with Node,RBAC
        "supportPlan": "KubernetesOfficial",  # upstream Kubernetes, as get-versions says
        # each node: a cni0 bridge with host-local pod addresses, as kubenet; no dnsServiceIP (no cluster DNS
        # runs), loadBalancerSku or outboundType (no load balancer: nodes reach only their apiserver)
        "networkProfile": {
            "networkPlugin": "kubenet",
            "podCidr": POD_CIDR,
            "serviceCidr": DEFAULT_SERVICE_CIDR,
            "podCidrs": [POD_CIDR],
            "serviceCidrs": [DEFAULT_SERVICE_CIDR],
            "ipFamilies": ["IPv4"],
        },
        "identityProfile": {
            "kubeletidentity": {
                "resourceId": f"/subscriptions/{cluster.subscription_id}/resourceGroups/"
                f"{node_resource_group(cluster)}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
                f"{cluster.display_name}-agentpool",
                "clientId": cluster.kubelet_client_id,
                "objectId": cluster.kubelet_object_id,
            }
        },
        "oidcIssuerProfile": {"enabled": False},
    }
    if cluster.ssh_public_key:
        properties["linuxProfile"] = {
            "adminUsername": "azureuser",
            "ssh": {"publicKeys": [{"keyData": cluster.ssh_public_key}]},
        }
    view: JsonObject = {
        "id": ResourceId.of(cluster).path(),
        "name": cluster.display_name,
        "type": f"{PROVIDER}/ManagedClusters",
        "location": cluster.location,
        "tags": cluster.tags,
        "sku": {"name": "Base", "tier": "Free"},
        "identity": {
            "principalId": cluster.identity_principal_id,
            "tenantId": cluster.identity_tenant_id,
            "type": "SystemAssigned",
        },
        "systemData": system_data_json(cluster),
        "properties": properties,
    }
    return {**view, "eTag": entity_tag(view)}


def system_data_json(resource: ManagedCluster | AgentPool) -> JsonObject:
    """ARM's `systemData` of a cluster or pool: who created it and who changed it last through the API
    (control/system_data.py), and when; the callers are left out where unknown (before migration 0022)."""
    data: JsonObject = {}
    if resource.created_by is not None:
        data["createdBy"], data["createdByType"] = resource.created_by, resource.created_by_type
    data["createdAt"] = iso(resource.created_at)
    if resource.last_modified_by is not None:
        data["lastModifiedBy"] = resource.last_modified_by
        data["lastModifiedByType"] = resource.last_modified_by_type
    data["lastModifiedAt"] = iso(resource.last_modified_at)
    return data


def upgrade_settings(pool: AgentPool) -> JsonObject:
    """`upgradeSettings` of a pool: each setting when set."""
    settings: JsonObject = {}
    if pool.max_surge is not None:
        settings["maxSurge"] = pool.max_surge
    if pool.drain_timeout_in_minutes is not None:
        settings["drainTimeoutInMinutes"] = pool.drain_timeout_in_minutes
    if pool.node_soak_duration_in_minutes is not None:
        settings["nodeSoakDurationInMinutes"] = pool.node_soak_duration_in_minutes
    if pool.undrainable_node_behavior is not None:
        settings["undrainableNodeBehavior"] = pool.undrainable_node_behavior
    return settings


def pool_properties(pool: AgentPool) -> JsonObject:
    """`properties` of an agent pool."""
    properties: JsonObject = {
        "count": pool.count,
        "vmSize": pool.vm_size,
        "osType": pool.os_type,
        "osSKU": pool.os_sku,
        "type": pool.pool_type,
        "mode": pool.mode,
        "enableFIPS": pool.enable_fips,
        "orchestratorVersion": pool.orchestrator_version,
        "currentOrchestratorVersion": running_kubernetes_version(pool.orchestrator_version),
        "osDiskType": pool.os_disk_type,
        "osDiskSizeGB": pool.os_disk_size_gb,
        "securityProfile": {"enableSecureBoot": pool.enable_secure_boot, "enableVTPM": pool.enable_vtpm},
        "nodeImageVersion": pool.node_image_version,
        "upgradeSettings": upgrade_settings(pool),
        "maxPods": DEFAULT_MAX_PODS if pool.max_pods is None else pool.max_pods,
        "provisioningState": pool.provisioning_state,
        "powerState": {"code": pool.power_state},
    }
    if pool.gpu_driver is not None:
        properties["gpuProfile"] = {"driver": pool.gpu_driver}
    if pool.node_labels:  # as AKS: absent when the pool has none
        properties["nodeLabels"] = pool.node_labels
    if pool.node_taints:
        properties["nodeTaints"] = pool.node_taints
    if pool.tags:
        properties["tags"] = pool.tags
    return properties


def pool_json(pool: AgentPool) -> JsonObject:
    """An agent pool as `GET .../agentPools/{name}` returns it (its eTag in `properties`, as AKS)."""
    properties = pool_properties(pool)
    return {
        "id": ResourceId.of(pool).path(),
        "name": pool.name,
        "type": f"{PROVIDER}/managedClusters/agentPools",
        "systemData": system_data_json(pool),
        "properties": {**properties, "eTag": entity_tag(properties)},
    }


def machine_vm_id(node: Node) -> str:
    """`properties.resourceId` of a machine: its VM as an instance of the pool's scale set, in the cluster's
    node resource group, as AKS names them: node `aks-nodepool1-00000001-vmss000000` is instance 0 of scale
    set `aks-nodepool1-00000001-vmss` (the VM runs under QEMU here: no Microsoft.Compute serves it)."""
    cluster = node.pool.cluster
    head, vmss, _instance = node.name.rpartition("vmss")
    scale_set = head + vmss if vmss else f"aks-{node.pool.name}-vmss"  # a name the reconciler did not make
    return (
        f"/subscriptions/{cluster.subscription_id}/resourceGroups/{node_resource_group(cluster)}/providers/"
        f"Microsoft.Compute/virtualMachineScaleSets/{scale_set}/virtualMachines/{node.ordinal}"
    )


def machine_kubernetes(node: Node) -> JsonObject:
    """`properties.kubernetes` of a machine, as AKS's Machine has it (MachineKubernetesProfile): its Node's
    name, the pool's nodeLabels and nodeTaints its Node carries (those the control plane last set on it;
    before it joined, the pool's), maxPods and Kubernetes version."""
    pool = node.pool
    labels = node.applied_node_labels if node.applied_node_labels is not None else pool.node_labels
    taints = node.applied_node_taints if node.applied_node_taints is not None else pool.node_taints
    return {
        "nodeName": node.name,
        "nodeLabels": labels or {},
        "nodeTaints": taints or [],
        "maxPods": DEFAULT_MAX_PODS if pool.max_pods is None else pool.max_pods,
        "orchestratorVersion": pool.orchestrator_version,
        "currentOrchestratorVersion": running_kubernetes_version(pool.orchestrator_version),
    }


def machine_json(node: Node) -> JsonObject:
    """A node as `GET .../agentPools/{pool}/machines[/{name}]` returns it, in AKS's shape (`network`: the
    address of the VM's NIC once it runs, `resourceId`, `kubernetes`: its Node's labels and taints, `mode`)
    with this server's state, security settings, verdict labels (`labels`) and the attestation status the
    reconciler recorded."""
    addresses = [{"family": "IPv4", "ip": NODE_ADDRESS}] if node.handle is not None else []
    return {
        "id": ResourceId.of(node).path(),
        "name": node.name,
        "type": f"{PROVIDER}/managedClusters/agentPools/machines",
        "properties": {
            "network": {"ipAddresses": addresses},
            "resourceId": machine_vm_id(node),
            "kubernetes": machine_kubernetes(node),
            "mode": node.pool.mode,
            "provisioningState": node.state,
            "powerState": {"code": power_state(node)},
            "health": {
                "state": health_state(node),
                "cause": node.health_cause,
                "failedChecks": node.failed_checks,
                "unhealthySince": iso(node.unhealthy_since),
                "repairs": node.repairs,
            },
            "nodeImageVersion": node.node_image_version,
            "securityProfile": {
                "enableSecureBoot": node.enable_secure_boot,
                "enableVTPM": node.enable_vtpm,
            },
            "attestationStatus": node.attestation_status,
            "lastAttestedAt": iso(node.last_attested_at),
            "attestationRequestedAt": iso(node.attestation_requested_at),
            "labels": node.labels,
            "message": node.message,
        },
    }


def kubernetes_versions_json(versions: tuple[str, ...]) -> JsonObject:
    """The `.../locations/{location}/kubernetesVersions` body: one entry per MAJOR.MINOR of the installed
    `versions`, each with its patches and their upgrades."""
    minors: dict[str, list[str]] = {}
    for version in versions:
        parsed = parse_kubernetes_version(version)
        if parsed is not None:
            minors.setdefault(f"{parsed[0]}.{parsed[1]}", []).append(version)
    values: list[JsonObject] = []
    for minor, patches in minors.items():
        entry: JsonObject = {
            "version": minor,
            "capabilities": {"supportPlan": ["KubernetesOfficial"]},
            "isPreview": False,
            "patchVersions": {patch: {"upgrades": kubernetes_upgrades(patch)} for patch in patches},
        }
        if DEFAULT_KUBERNETES_VERSION in patches:
            entry["isDefault"] = True
        values.append(entry)
    return {"values": values}


def operation_path(operation: Operation, kind: str = "operations") -> str:
    """Path of the operation status (`operations`) or result (`operationresults`) endpoint."""
    return (
        f"/subscriptions/{operation.subscription_id}/providers/{PROVIDER}/locations/{operation.location}"
        f"/{kind}/{operation.id}"
    )


def operation_json(operation: Operation, resource_id: str) -> JsonObject:
    """The Azure-AsyncOperation status body of `operation`, on `resource_id` as ARM spells it."""
    body: JsonObject = {
        "id": operation_path(operation),
        "name": operation.id,
        "status": operation.status,
        "startTime": iso(operation.start_time),
        "endTime": iso(operation.end_time),
        "properties": {"resourceId": resource_id, "kind": operation.kind, "note": operation.note},
    }
    if operation.error:
        body["error"] = operation.error
    return body


def feature_json(feature: FeatureRegistration) -> JsonObject:
    """A preview feature as `GET .../Microsoft.Features/providers/{ns}/features/{name}` returns it."""
    return {
        "id": f"/subscriptions/{feature.subscription_id}/providers/Microsoft.Features/providers/"
        f"{feature.namespace}/features/{feature.name}",
        "name": f"{feature.namespace}/{feature.name}",
        "type": "Microsoft.Features/providers/features",
        "properties": {"state": feature.state},
    }


def provider_json(provider: ProviderRegistration) -> JsonObject:
    """A resource provider as `GET /subscriptions/{sub}/providers/{ns}` returns it."""
    return {
        "id": f"/subscriptions/{provider.subscription_id}/providers/{provider.namespace}",
        "namespace": provider.namespace,
        "registrationState": provider.state,
    }


def kubeconfig_json(cluster: ManagedCluster, user_kind: str) -> JsonObject:
    """The `listCluster{User,Admin}Credential` body: one base64 kubeconfig (JSON, which is valid YAML)
    pointing at the cluster's hosted control plane with its admin or clusterUser client certificate; for a
    cluster without one (TL_HOSTED_CONTROL_PLANES=0), at `https://{fqdn}:443` with the cluster's token, as
    AKS shapes it (no API server answers there)."""
    user = f"{user_kind}_{cluster.resource_group}_{cluster.name}"
    hosted = hosted_credential(cluster, admin=user_kind == "clusterAdmin")
    if hosted is not None:
        server, credential = hosted.api_server, hosted.user
    else:
        server = ApiServer(f"https://{cluster.fqdn}:443")
        credential = {"token": cluster.kube_token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster.name, "cluster": server.cluster_entry()}],
        "contexts": [{"name": cluster.name, "context": {"cluster": cluster.name, "user": user}}],
        "current-context": cluster.name,
        "users": [{"name": user, "user": credential}],
    }
    value = base64.b64encode(json.dumps(config, indent=2).encode()).decode()
    return {"kubeconfigs": [{"name": user_kind, "value": value}]}


def resource_group_json(group: ResourceGroup) -> JsonObject:
    """A resource group as `GET /subscriptions/{sub}/resourceGroups/{name}` returns it."""
    return {
        "id": f"/subscriptions/{group.subscription_id}/resourceGroups/{group.display_name}",
        "name": group.display_name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": group.location,
        "tags": group.tags,
        "properties": {"provisioningState": group.provisioning_state},
    }


def upgrade_profile_json(profile: UpgradeProfile) -> JsonObject:
    """A pool's AgentPoolUpgradeProfile (`GET .../agentPools/{pool}/upgradeProfiles/default`): the Kubernetes
    versions it may move to, its latest node image version and, per Kubernetes version (major.minor) of the
    pool and its upgrades, the kernel, shim and GRUB packages that version is built from."""
    pool = profile.pool
    minors = []
    for version in (pool.orchestrator_version, *profile.kubernetes_upgrades):
        parsed = parse_kubernetes_version(version)
        minor = f"{parsed[0]}.{parsed[1]}" if parsed else version
        if minor not in minors:
            minors.append(minor)
    build = profile.latest_build
    components = (
        []
        if build is None
        else [
            {"name": build.kernel_package, "version": build.kernel_version},
            {"name": SHIM_PACKAGE, "version": build.shim_version},
            {"name": GRUB_PACKAGE, "version": build.grub_version},
        ]
    )
    return {
        "id": ResourceId.of(pool).child("upgradeProfiles", "default").path(),
        "name": "default",
        "type": UPGRADE_PROFILE_TYPE,
        "properties": {
            "kubernetesVersion": pool.orchestrator_version,
            "osType": pool.os_type,
            "upgrades": [
                {"kubernetesVersion": version, "isPreview": False} for version in profile.kubernetes_upgrades
            ],
            "latestNodeImageVersion": profile.latest_node_image_version,
            "componentsByReleases": [
                {"kubernetesVersion": minor, "components": components} for minor in minors if components
            ],
        },
    }
