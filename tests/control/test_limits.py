"""One test per AKS limitation in control/limits.py: the violating request and the closest valid one."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.kubernetes_release import KUBERNETES_VERSION
from trustedlaunch.control.limits import (
    DEFAULT_KUBERNETES_VERSION,
    INSTALLED_KUBERNETES_VERSIONS,
    LIMITATIONS,
    MAX_AGENT_POOLS,
    OS_TYPE_NOT_SUPPORTED,
    QUOTAS,
    TL_INCOMPATIBLE,
    ClusterRequest,
    LocationRequest,
    NodePlacement,
    PoolDeletion,
    PoolRequest,
    Quota,
    QuotaRequest,
    SecurityFlags,
    Usage,
    VersionRequest,
    check_cluster,
    check_deletion,
    check_flags,
    check_location,
    check_placement,
    check_pool,
    check_quota,
    check_version,
    configured_quotas,
    installed_patch,
    kubernetes_upgrades,
    parse_kubernetes_version,
    pool_usage,
    raise_violations,
)
from trustedlaunch.control.node_images import find_image, linux_image_version, node_images
from trustedlaunch.control.vm_sizes import find_vm_size, vm_sizes
from trustedlaunch.node.debian import debian_release
from trustedlaunch.node.qemu import NODE_MEMORY_MIB, NODE_VCPUS

VALID_TL = PoolRequest(
    name="tlpool",
    os_type="Linux",
    os_sku="Ubuntu",
    vm_size="Standard_D4s_v3",
    pool_type="VirtualMachineScaleSets",
    orchestrator_version="1.30.6",
    enable_fips=False,
    os_disk_type="Managed",
    os_disk_size_gb=128,
    gpu_driver=None,
    enable_secure_boot=True,
    enable_vtpm=True,
)


def codes_and_targets(request: PoolRequest) -> list[tuple[str, str | None]]:
    return [(v.code, v.target) for v in check_pool(request)]


def test_valid_trusted_launch_pool_has_no_violation() -> None:
    assert check_pool(VALID_TL) == []


@pytest.mark.parametrize("name", ["a", "np1", "abcdefghijk"])
def test_pool_name_valid(name: str) -> None:
    assert check_pool(replace(VALID_TL, name=name)) == []


@pytest.mark.parametrize("name", ["", "1pool", "Pool", "pool-1", "abcdefghijkl", "pool_1"])
def test_pool_name_invalid(name: str) -> None:
    assert codes_and_targets(replace(VALID_TL, name=name)) == [("InvalidParameter", "name")]


def test_windows_pool_name_limited_to_six_characters() -> None:
    windows = replace(
        VALID_TL, os_type="Windows", os_sku="Windows2022", enable_secure_boot=False, enable_vtpm=False
    )
    assert [v.code for v in check_pool(replace(windows, name="win123"))] == [OS_TYPE_NOT_SUPPORTED]
    violations = check_pool(replace(windows, name="win1234"))
    assert [v.code for v in violations] == ["InvalidParameter", OS_TYPE_NOT_SUPPORTED]
    assert "1-6" in violations[0].message


def test_duplicate_pool_name() -> None:
    violations = check_pool(replace(VALID_TL, sibling_pool_names=("nodepool1", "TLPOOL")))
    assert [(v.code, v.target, v.status) for v in violations] == [("DuplicateAgentPoolName", "name", 409)]
    assert check_pool(replace(VALID_TL, sibling_pool_names=("nodepool1",))) == []


def test_unknown_vm_size() -> None:
    assert codes_and_targets(replace(VALID_TL, vm_size="Standard_Imaginary_v9")) == [
        ("VMSizeNotSupported", "properties.vmSize")
    ]
    assert check_pool(replace(VALID_TL, vm_size="standard_d4s_v3")) == []  # case-insensitive


def test_os_sku_must_match_os_type() -> None:
    assert codes_and_targets(replace(VALID_TL, os_sku="Windows2022")) == [
        ("InvalidOSSKU", "properties.osSKU")
    ]
    assert check_pool(replace(VALID_TL, os_sku="AzureLinux")) == []


def test_malformed_kubernetes_version() -> None:
    assert codes_and_targets(replace(VALID_TL, orchestrator_version="v1.30")) == [
        ("InvalidKubernetesVersion", "properties.orchestratorVersion")
    ]


def test_kubernetes_older_than_1_25_2() -> None:
    violations = check_pool(replace(VALID_TL, orchestrator_version="1.25.1"))
    assert [(v.code, v.target) for v in violations] == [(TL_INCOMPATIBLE, "properties.orchestratorVersion")]
    assert "1.25.2" in violations[0].message and "1.25.1" in violations[0].message
    assert check_pool(replace(VALID_TL, orchestrator_version="1.25.2")) == []
    assert check_pool(replace(VALID_TL, orchestrator_version="1.25")) == []  # newest 1.25 patch
    no_tl = replace(VALID_TL, orchestrator_version="1.24.9", enable_secure_boot=False, enable_vtpm=False)
    assert check_pool(no_tl) == []


def test_pool_version_not_newer_than_control_plane() -> None:
    violations = check_pool(replace(VALID_TL, orchestrator_version="1.31.1", cluster_version="1.30.6"))
    assert [(v.code, v.target) for v in violations] == [
        ("InvalidKubernetesVersion", "properties.orchestratorVersion")
    ]
    assert "1.30.6" in violations[0].message
    assert check_pool(replace(VALID_TL, orchestrator_version="1.30.6", cluster_version="1.30.6")) == []
    assert check_pool(replace(VALID_TL, orchestrator_version="1.29.9", cluster_version="1.30.6")) == []
    assert check_pool(replace(VALID_TL, orchestrator_version="1.30", cluster_version="1.30.6")) == []


def test_pool_version_cannot_be_downgraded() -> None:
    downgraded = replace(VALID_TL, orchestrator_version="1.29.9", previous=VALID_TL)
    violations = check_pool(downgraded)
    assert [(v.code, v.target) for v in violations] == [
        ("InvalidKubernetesVersion", "properties.orchestratorVersion")
    ]
    assert "from Kubernetes 1.30.6 to 1.29.9" in violations[0].message
    assert check_pool(replace(VALID_TL, orchestrator_version="1.31.0", previous=VALID_TL)) == []


def test_cluster_version_cannot_be_downgraded() -> None:
    violations = check_cluster(ClusterRequest(1, 1, "1.29.9", "1.30.6"))
    assert [(v.code, v.target) for v in violations] == [
        ("InvalidKubernetesVersion", "properties.kubernetesVersion")
    ]
    assert check_cluster(ClusterRequest(1, 1, "1.31.0", "1.30.6")) == []
    assert check_cluster(ClusterRequest(1, 1, "1.30.6")) == []


def test_generation_1_only_size() -> None:
    violations = check_pool(replace(VALID_TL, vm_size="Standard_A2_v2"))
    assert [(v.code, v.target) for v in violations] == [(TL_INCOMPATIBLE, "properties.vmSize")]
    assert "Generation 2" in violations[0].message
    assert (
        check_pool(replace(VALID_TL, vm_size="Standard_A2_v2", enable_secure_boot=False, enable_vtpm=False))
        == []
    )


def test_windows_pool() -> None:
    request = replace(VALID_TL, name="win", os_type="Windows", os_sku="Windows2022")
    assert codes_and_targets(request) == [
        (OS_TYPE_NOT_SUPPORTED, "properties.osType"),
        (TL_INCOMPATIBLE, "properties.osType"),
    ]
    plain = replace(request, enable_secure_boot=False, enable_vtpm=False)
    (refused,) = check_pool(plain)
    assert (refused.code, refused.target, refused.status) == (OS_TYPE_NOT_SUPPORTED, "properties.osType", 400)
    assert "Pool 'win' is Windows" in refused.message and "only Linux node images" in refused.message
    # a Windows pool an earlier version stored: updated (or scaled down) freely, never grown
    assert check_pool(replace(plain, previous=plain)) == []
    assert check_pool(replace(plain, count=0, previous=plain)) == []
    assert codes_and_targets(replace(plain, count=2, previous=plain)) == [
        (OS_TYPE_NOT_SUPPORTED, "properties.osType")
    ]


def test_fips() -> None:
    assert codes_and_targets(replace(VALID_TL, enable_fips=True)) == [
        (TL_INCOMPATIBLE, "properties.enableFIPS")
    ]
    assert check_pool(replace(VALID_TL, enable_fips=True, enable_secure_boot=False, enable_vtpm=False)) == []


def test_arm64_size() -> None:
    violations = check_pool(replace(VALID_TL, vm_size="Standard_D2ps_v5", enable_secure_boot=False))
    assert [(v.code, v.target) for v in violations] == [(TL_INCOMPATIBLE, "properties.vmSize")]
    assert "Arm64" in violations[0].message
    assert (
        check_pool(replace(VALID_TL, vm_size="Standard_D2ps_v5", enable_secure_boot=False, enable_vtpm=False))
        == []
    )


def test_virtual_nodes() -> None:
    assert codes_and_targets(replace(VALID_TL, virtual_nodes=True)) == [
        (TL_INCOMPATIBLE, "properties.addonProfiles.aciConnectorLinux")
    ]
    assert (
        check_pool(replace(VALID_TL, virtual_nodes=True, enable_secure_boot=False, enable_vtpm=False)) == []
    )


def test_availability_set() -> None:
    assert codes_and_targets(replace(VALID_TL, pool_type="AvailabilitySet")) == [
        (TL_INCOMPATIBLE, "properties.type")
    ]
    assert check_pool(replace(VALID_TL, pool_type="VirtualMachines")) == []


@pytest.mark.parametrize("size", ["Standard_NC6s_v3", "Standard_NC4as_T4_v3"])
def test_gpu_with_secure_boot_needs_driver_skipped(size: str) -> None:
    assert codes_and_targets(replace(VALID_TL, vm_size=size, gpu_driver="Install")) == [
        (TL_INCOMPATIBLE, "properties.gpuProfile.driver")
    ]
    assert codes_and_targets(replace(VALID_TL, vm_size=size)) == [
        (TL_INCOMPATIBLE, "properties.gpuProfile.driver")
    ]
    assert check_pool(replace(VALID_TL, vm_size=size, gpu_driver="None")) == []
    assert check_pool(replace(VALID_TL, vm_size=size, enable_secure_boot=False)) == []  # vTPM only is fine


def test_ephemeral_os_disk_must_fit_cache_or_temp_disk() -> None:
    # D2s_v3: 50 GiB cache, 16 GiB temp disk.
    too_big = replace(VALID_TL, vm_size="Standard_D2s_v3", os_disk_type="Ephemeral", os_disk_size_gb=50)
    violations = check_pool(too_big)  # 50 GiB + 1 GiB VM guest state of a trusted launch VM
    assert [(v.code, v.target) for v in violations] == [
        ("EphemeralOSDiskSizeTooLarge", "properties.osDiskType")
    ]
    assert "51 GiB" in violations[0].message and "50 GiB" in violations[0].message
    assert check_pool(replace(too_big, os_disk_size_gb=49)) == []
    assert check_pool(replace(too_big, enable_secure_boot=False, enable_vtpm=False)) == []
    assert check_pool(replace(too_big, os_disk_type="Managed")) == []
    no_local_disk = replace(VALID_TL, vm_size="Standard_D2s_v5", os_disk_type="Ephemeral", os_disk_size_gb=30)
    assert [v.code for v in check_pool(no_local_disk)] == ["EphemeralOSDiskSizeTooLarge"]


@pytest.mark.parametrize(("secure_boot", "vtpm"), [(False, True), (True, False)])
def test_guest_state_reserve_applies_to_each_trusted_launch_setting(secure_boot: bool, vtpm: bool) -> None:
    """A vTPM-only or Secure-Boot-only VM keeps guest state (vTPM state, UEFI variables) beside its
    ephemeral OS disk too: 50 GiB on D2s_v3's 50 GiB cache needs 51 GiB."""
    request = replace(
        VALID_TL,
        vm_size="Standard_D2s_v3",
        os_disk_type="Ephemeral",
        os_disk_size_gb=50,
        enable_secure_boot=secure_boot,
        enable_vtpm=vtpm,
    )
    [violation] = check_pool(request)
    assert (violation.code, violation.target) == ("EphemeralOSDiskSizeTooLarge", "properties.osDiskType")
    assert "needs 51 GiB" in violation.message and "at most 50 GiB" in violation.message
    assert check_pool(replace(request, os_disk_size_gb=49)) == []


def test_preview_feature_not_registered_names_the_command() -> None:
    violations = check_pool(replace(VALID_TL, feature_registered=False))
    assert [v.code for v in violations] == ["PreviewFeatureNotRegistered"]
    assert (
        "tl feature register --namespace Microsoft.ContainerService --name TrustedLaunchPreview"
        in violations[0].message
    )
    assert (
        check_pool(replace(VALID_TL, feature_registered=False, enable_secure_boot=False, enable_vtpm=False))
        == []
    )


def test_pool_on_non_trusted_launch_image_cannot_be_updated_to_trusted_launch() -> None:
    non_tl = find_image(linux_image_version(trusted_launch=False, debian=debian_release()))
    tl = find_image(linux_image_version(trusted_launch=True, debian=debian_release()))
    assert non_tl is not None and tl is not None
    violations = check_pool(replace(VALID_TL, current_image=non_tl))
    assert [(v.code, v.target) for v in violations] == [(TL_INCOMPATIBLE, "properties.securityProfile")]
    assert non_tl.version in violations[0].message
    assert check_pool(replace(VALID_TL, current_image=tl)) == []
    assert (
        check_pool(replace(VALID_TL, current_image=non_tl, enable_secure_boot=False, enable_vtpm=False)) == []
    )


@pytest.mark.parametrize(
    ("attr", "value", "prop"),
    [
        ("vm_size", "Standard_D8s_v3", "vmSize"),
        ("os_type", "Windows", "osType"),
        ("os_sku", "AzureLinux", "osSKU"),
        ("pool_type", "VirtualMachines", "type"),
        ("enable_fips", True, "enableFIPS"),
        ("os_disk_type", "Ephemeral", "osDiskType"),
        ("os_disk_size_gb", 64, "osDiskSizeGB"),
        ("gpu_driver", "None", "gpuProfile.driver"),
    ],
)
def test_immutable_pool_properties(attr: str, value: object, prop: str) -> None:
    updated = replace(VALID_TL, previous=VALID_TL, enable_secure_boot=False, **{attr: value})  # type: ignore[arg-type]
    violations = [v for v in check_pool(updated) if v.code == "PropertyChangeNotAllowed"]
    assert [v.target for v in violations] == [f"properties.{prop}"]
    assert check_pool(replace(VALID_TL, previous=VALID_TL, enable_secure_boot=False)) == []


def test_system_pool_needs_a_node() -> None:
    system = replace(VALID_TL, mode="System")
    assert [(v.code, v.target) for v in check_pool(replace(system, count=0))] == [
        ("InvalidParameter", "properties.count")
    ]
    assert check_pool(replace(system, count=1)) == []
    assert check_pool(replace(VALID_TL, count=0)) == []  # User pools may be empty


def test_last_system_pool_cannot_become_user() -> None:
    system = replace(VALID_TL, mode="System")
    demoted = replace(VALID_TL, mode="User", previous=system)
    assert [(v.code, v.target) for v in check_pool(demoted)] == [("SystemPoolRequired", "properties.mode")]
    assert check_pool(replace(demoted, other_system_pools=1)) == []


def test_cluster_needs_a_system_pool() -> None:
    assert [(v.code, v.target) for v in check_cluster(ClusterRequest(2, 0))] == [
        ("SystemPoolRequired", "properties.agentPoolProfiles")
    ]
    assert check_cluster(ClusterRequest(2, 1)) == []


def test_cluster_holds_at_most_max_agent_pools() -> None:
    assert check_cluster(ClusterRequest(MAX_AGENT_POOLS, 1)) == []
    (violation,) = check_cluster(ClusterRequest(MAX_AGENT_POOLS + 1, 1))
    assert (violation.code, violation.target) == ("InvalidParameter", "properties.agentPoolProfiles")
    assert (
        violation.message
        == "The managed cluster would have 101 agent pools; at most 100 are allowed (maxAgentPools)."
    )


def test_last_system_pool_cannot_be_deleted() -> None:
    violations = check_deletion(PoolDeletion("nodepool1", "System", 0))
    assert [(v.code, v.target) for v in violations] == [("SystemPoolRequired", "agentPoolName")]
    assert "nodepool1" in violations[0].message
    assert check_deletion(PoolDeletion("nodepool1", "System", 1)) == []
    assert check_deletion(PoolDeletion("userpool", "User", 0)) == []


def test_a_node_without_a_host_with_room_fails_allocation() -> None:
    [violation] = check_placement(NodePlacement("aks-nodepool1-0", hosts=2, with_room=0))
    assert (violation.status, violation.code, violation.target) == (409, "AllocationFailed", "nodeHosts")
    assert (
        "none of the 2 registered node hosts" in violation.message and "aks-nodepool1-0" in violation.message
    )
    assert check_placement(NodePlacement("aks-nodepool1-0", hosts=2, with_room=1)) == []
    assert check_placement(NodePlacement("aks-nodepool1-0", hosts=0, with_room=0)) == []  # this machine
    [cordoned] = check_placement(NodePlacement("aks-nodepool1-0", 2, 0, cordoned_with_room=("h1", "h2")))
    assert (cordoned.status, cordoned.code) == (409, "AllocationFailed")
    assert "only cordoned ones have room for node aks-nodepool1-0 (h1, h2)" in cordoned.message
    assert "tl host uncordon" in cordoned.message
    assert check_placement(NodePlacement("aks-nodepool1-0", 2, 1, cordoned_with_room=("h1",))) == []


def test_enable_and_disable_of_the_same_setting() -> None:
    violations = check_flags(
        SecurityFlags(enable_secure_boot=True, disable_secure_boot=True, enable_vtpm=True)
    )
    assert [(v.code, v.target) for v in violations] == [
        ("MutuallyExclusiveArguments", "--enable-secure-boot/--disable-secure-boot")
    ]
    both = check_flags(SecurityFlags(True, True, True, True))
    assert [v.target for v in both] == [
        "--enable-secure-boot/--disable-secure-boot",
        "--enable-vtpm/--disable-vtpm",
    ]
    assert check_flags(SecurityFlags(enable_secure_boot=True, disable_vtpm=True)) == []


def test_every_violation_is_reported_with_its_target() -> None:
    request = replace(
        VALID_TL,
        name="Bad-Name",
        vm_size="Standard_D2ps_v5",
        os_type="Windows",
        os_sku="Windows2022",
        enable_fips=True,
        pool_type="AvailabilitySet",
        orchestrator_version="1.24.0",
        feature_registered=False,
    )
    violations = check_pool(request, target_prefix="properties.agentPoolProfiles[0].")
    assert len(violations) == 8
    assert all(v.target and v.target.startswith("properties.agentPoolProfiles[0].") for v in violations)
    with pytest.raises(ArmError) as raised:
        raise_violations(violations)
    error = raised.value
    assert error.status == 400 and error.code == "InvalidParameter"
    assert error.message.startswith("8 problems")
    assert len(error.to_body()["error"]["details"]) == 8  # type: ignore[index]
    raise_violations([])  # nothing to raise


def test_every_limitation_is_exercised_by_a_test() -> None:
    """Each table row has a code, a target and a message; a new row needs its own test above."""
    assert len(LIMITATIONS) == 65
    assert all(rule.code and rule.target and rule.message for rule in LIMITATIONS)
    unpunctuated = [rule.message for rule in LIMITATIONS if not rule.message.endswith(".")]
    assert [message.endswith("preserved by aks system labels") for message in unpunctuated] == [True]  # AKS's


def test_parse_kubernetes_version() -> None:
    assert parse_kubernetes_version("1.25.2") == (1, 25, 2)
    assert parse_kubernetes_version("1.25") == (1, 25, 10**6)
    assert parse_kubernetes_version("1.25.x") is None


def test_the_installed_version_is_the_pinned_release() -> None:
    assert (KUBERNETES_VERSION.removeprefix("v"),) == INSTALLED_KUBERNETES_VERSIONS
    assert KUBERNETES_VERSION.removeprefix("v") == DEFAULT_KUBERNETES_VERSION


def test_a_version_names_an_installed_patch() -> None:
    installed = ("1.35.2", "1.36.1", "1.36.3")
    assert installed_patch("1.36.1", installed) == "1.36.1"
    assert installed_patch("1.36", installed) == "1.36.3"  # MAJOR.MINOR: the newest installed patch
    assert installed_patch("1.35", installed) == "1.35.2"
    assert installed_patch("1.36.2", installed) is None
    assert installed_patch("1.37", installed) is None
    assert installed_patch("1.36.x", installed) is None
    assert kubernetes_upgrades("1.35.2", installed) == ["1.36.1", "1.36.3"]
    assert kubernetes_upgrades("1.36.3", installed) == []


@pytest.mark.parametrize(
    "version", [DEFAULT_KUBERNETES_VERSION, DEFAULT_KUBERNETES_VERSION.rsplit(".", 1)[0]]
)
def test_installed_versions_are_accepted(version: str) -> None:
    assert check_version(VersionRequest(version, "eastus")) == []
    assert check_version(VersionRequest(version, "eastus", pool="np")) == []


@pytest.mark.parametrize("version", ["1.30.6", "1.25.2", "1.36.99", "1.37", "2.0.0"])
def test_a_cluster_version_that_is_not_installed_is_refused_as_aks_does(version: str) -> None:
    (violation,) = check_version(VersionRequest(version, "East US"))
    assert (violation.status, violation.code, violation.target) == (
        400,
        "K8sVersionNotSupported",
        "properties.kubernetesVersion",
    )
    assert violation.message.startswith(f"Version {version} is not supported in this region(eastus). ")
    assert f"Supported versions: {DEFAULT_KUBERNETES_VERSION}." in violation.message


def test_a_pool_version_that_is_not_installed_is_refused_as_aks_does() -> None:
    (violation,) = check_version(
        VersionRequest("1.30.6", "eastus", pool="np"), "properties.agentPoolProfiles[0]."
    )
    assert (violation.code, violation.target) == (
        "AgentPoolK8sVersionNotSupported",
        "properties.agentPoolProfiles[0].orchestratorVersion",
    )
    assert violation.message.startswith("Version 1.30.6 is not supported in this region(eastus). ")
    assert f"Agent pool 'np' cannot use it; supported versions: {DEFAULT_KUBERNETES_VERSION}." in (
        violation.message
    )


def test_a_malformed_cluster_version_is_refused_once() -> None:
    (violation,) = check_version(VersionRequest("1.x", "eastus"))
    assert (violation.code, violation.target) == ("InvalidKubernetesVersion", "properties.kubernetesVersion")
    assert f"(e.g. {DEFAULT_KUBERNETES_VERSION})" in violation.message
    assert check_version(VersionRequest("1.x", "eastus", pool="np")) == []  # a pool rule (check_pool)


def test_a_location_in_a_path_is_checked_against_the_catalogue() -> None:
    kind = "Microsoft.ContainerService/locations/kubernetesVersions"
    assert check_location(LocationRequest("West Europe", kind)) == []
    (violation,) = check_location(LocationRequest("mars", kind))
    assert (violation.code, violation.target) == ("LocationNotAvailableForResourceType", "location")
    assert f"not available for resource type '{kind}'" in violation.message


def test_vm_size_catalogue() -> None:
    sizes = vm_sizes()
    assert len(sizes) >= 15
    a2 = find_vm_size("Standard_A2_v2")
    assert a2 is not None and not a2.supports_gen2
    arm = find_vm_size("Standard_D2ps_v5")
    assert arm is not None and arm.architecture == "Arm64"
    gpu = find_vm_size("Standard_NC4as_T4_v3")
    assert gpu is not None and gpu.gpu and "T4" in gpu.gpu
    ds2 = find_vm_size("Standard_DS2_v2")
    assert ds2 is not None and ds2.ephemeral_capacity_gib == 86


def test_node_image_catalogue_has_tl_and_non_tl_images() -> None:
    assert any(image.trusted_launch_capable for image in node_images())
    assert any(not image.trusted_launch_capable and image.os_type == "Linux" for image in node_images())
    assert len({image.version for image in node_images()}) == len(node_images())


@pytest.mark.parametrize("location", ["eastus", "East US", "westeurope"])
def test_catalogued_locations_are_accepted(location: str) -> None:
    assert check_cluster(ClusterRequest(1, 1, "1.30.6", location=location)) == []


@pytest.mark.parametrize("location", ["eastus/../x", "..", "mars", "east%2Fus"])
def test_other_locations_are_refused(location: str) -> None:
    (violation,) = check_cluster(ClusterRequest(1, 1, "1.30.6", location=location))
    assert (violation.status, violation.code, violation.target) == (
        400,
        "LocationNotAvailableForResourceType",
        "location",
    )
    assert f"The provided location '{location}' is not available" in violation.message
    assert "eastus" in violation.message.split("List of available regions")[1]
    assert "resource type 'Microsoft.ContainerService/managedClusters'" in violation.message


def test_a_pool_reserves_its_nodes_and_surge_nodes_as_the_vms_get_them() -> None:
    assert pool_usage(3, None) == Usage(0, 3, 3 * NODE_VCPUS, 3 * NODE_MEMORY_MIB)
    assert pool_usage(3, "1") == Usage(0, 4, 4 * NODE_VCPUS, 4 * NODE_MEMORY_MIB)
    assert pool_usage(3, "34%") == pool_usage(5, None)  # 34% of 3 rounded up: 2 surge nodes
    assert pool_usage(2, "1000") == pool_usage(4, None)  # a reimage surges by at most one node per node


LIMITS = Usage(clusters=2, nodes=10, cores=8, memory_mib=8 * NODE_MEMORY_MIB)


@pytest.mark.parametrize("quota", QUOTAS, ids=lambda quota: quota.name)
def test_each_quota_refuses_growth_past_its_limit(quota: Quota) -> None:
    attribute = quota.attribute
    usage = Usage(clusters=1, nodes=5, cores=5, memory_mib=5 * NODE_MEMORY_MIB)
    limit = getattr(LIMITS, attribute)
    requested = replace(usage, **{attribute: limit + 1})
    (violation,) = check_quota(QuotaRequest("sub", usage, requested, LIMITS))
    assert (violation.status, violation.code, violation.target) == (409, "QuotaExceeded", "subscriptionId")
    current = getattr(usage, attribute)
    assert (
        f"exceeding the {quota.name} quota ({quota.unit}) of subscription 'sub'. "
        f"Current Limit: {limit}, Current Usage: {current}, "
        f"Additional Required: {limit + 1 - current}, (Minimum) New Limit Required: {limit + 1}."
    ) in violation.message
    assert quota.setting in violation.message
    assert check_quota(QuotaRequest("sub", usage, replace(usage, **{attribute: limit}), LIMITS)) == []


def test_shrinking_is_allowed_above_a_lowered_quota() -> None:
    over = Usage(clusters=3, nodes=20, cores=20, memory_mib=20 * NODE_MEMORY_MIB)
    assert check_quota(QuotaRequest("sub", over, over - pool_usage(1, None), LIMITS)) == []
    assert check_quota(QuotaRequest("sub", over, over, LIMITS)) == []


def test_quotas_are_configured_by_environment_with_host_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for quota in QUOTAS:
        monkeypatch.delenv(quota.setting, raising=False)
    defaults = configured_quotas()
    assert defaults.clusters == 20 and defaults.nodes == 100
    assert defaults.cores == 16 * len(os.sched_getaffinity(0))
    host_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert defaults.memory_mib == int(0.75 * host_mib)
    monkeypatch.setenv("TL_QUOTA_NODES", "7")
    monkeypatch.setenv("TL_QUOTA_CORES", "0")
    monkeypatch.setenv("TL_QUOTA_CLUSTERS", "many")  # not a whole number: the default
    assert configured_quotas() == replace(defaults, nodes=7, cores=0)
