"""The limits table's rows for a pool's nodeLabels (AKS's BadRequest and wording: Kubernetes label syntax,
the `kubernetes.azure.com` prefix AKS keeps for its own labels, the kubernetes.io and k8s.io keys a node may
not carry), nodeTaints and maxPods (AKS's InvalidParameter form: taint syntax, taints that fit the join
bundle, maxPods's range 10-250, and that maxPods cannot change on an existing pool)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from trustedlaunch.control.cluster_pki import create_cluster_pki
from trustedlaunch.control.limits import (
    DEFAULT_MAX_PODS,
    MAX_NODE_TAINTS,
    NodeTaint,
    PoolRequest,
    check_pool,
    invalid_labels,
    join_taints_size,
    parse_taint,
)
from trustedlaunch.control.node_join import issue_kubelet_credentials, pool_taints
from trustedlaunch.node.kubelet import (
    ATTESTATION_PENDING_TAINT,
    MAX_JOIN_BUNDLE_SIZE,
    MAX_REGISTRATION_TAINTS_SIZE,
    KubeletJoin,
)

VALID = PoolRequest(
    name="labelnp",
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
    node_labels=(("costcenter", "5000"), ("dept", "HR"), ("example.com/team", "payments"), ("empty", "")),
    node_taints=("sku=gpu:NoSchedule", "dedicated:NoExecute", "example.com/x=y:PreferNoSchedule"),
    max_pods=30,
)


def codes(request: PoolRequest) -> list[tuple[str, str | None]]:
    return [(v.code, v.target) for v in check_pool(request)]


def test_labels_taints_and_max_pods_as_aks_takes_them_pass() -> None:
    assert check_pool(VALID) == []
    assert check_pool(replace(VALID, max_pods=10)) == check_pool(replace(VALID, max_pods=250)) == []
    assert DEFAULT_MAX_PODS == 110 and check_pool(replace(VALID, max_pods=DEFAULT_MAX_PODS)) == []


@pytest.mark.parametrize(
    "label",
    [
        ("-dept", "HR"),
        ("dept", "H R"),
        ("a" * 64, "x"),
        ("dept", "x" * 64),
        ("Example.com/x", "y"),
        ("/x", ""),
    ],
)
def test_a_label_that_is_not_a_kubernetes_label_is_refused(label: tuple[str, str]) -> None:
    request = replace(VALID, node_labels=(label,))
    assert codes(request) == [("BadRequest", "properties.nodeLabels")]
    assert check_pool(request)[0].message == (
        f"Node label '{label[0]}: {label[1]}' does not meet syntax and character specifications. Please see "
        "https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/ for more details."
    )


def test_the_aks_label_prefix_is_refused() -> None:
    request = replace(VALID, node_labels=(("kubernetes.azure.com/secure-boot", "true"), ("dept", "HR")))
    [violation] = check_pool(request)
    assert (violation.code, violation.target) == ("BadRequest", "properties.nodeLabels")
    assert violation.message == (
        "Invalid node label key kubernetes.azure.com/secure-boot. The 'kubernetes.azure.com' prefix is "
        "preserved by aks system labels"  # AKS's words, as its BadRequest says them
    )
    assert invalid_labels({"kubernetes.azure.com/x": "y"}) == []  # well formed: refused for its prefix only


@pytest.mark.parametrize(
    "key", ["node-role.kubernetes.io/eos", "node-restriction.kubernetes.io/x", "k8s.io/x"]
)
def test_kubernetes_io_keys_a_node_may_not_carry_are_refused(key: str) -> None:
    [violation] = check_pool(replace(VALID, node_labels=((key, "true"),)))
    assert (violation.code, violation.target) == ("BadRequest", "properties.nodeLabels")
    assert violation.message.startswith(
        "For Kubernetes version greater than or equal to 1.16, node label keys in the 'kubernetes.io' or "
        "'k8s.io' namespace must begin with an allowed prefix (kubelet.kubernetes.io, node.kubernetes.io)"
    )
    assert violation.message.endswith(f"Pool 'labelnp' has {key}.")


@pytest.mark.parametrize(
    "key", ["node.kubernetes.io/lifecycle", "kubelet.kubernetes.io/x", "kubernetes.io/arch"]
)
def test_kubernetes_io_keys_a_node_may_carry_pass(key: str) -> None:
    assert check_pool(replace(VALID, node_labels=((key, "x"),))) == []


@pytest.mark.parametrize(
    "taint", ["sku=gpu", "sku=gpu:NoScheduleX", "sku=gpu:", "=gpu:NoSchedule", "sku=g pu:NoSchedule", "a:b:c"]
)
def test_a_taint_that_is_not_key_value_effect_is_refused(taint: str) -> None:
    assert parse_taint(taint) is None
    request = replace(VALID, node_taints=(taint,))
    assert codes(request) == [("InvalidParameter", "properties.nodeTaints")]
    assert taint in check_pool(request)[0].message


def test_the_aks_taint_prefix_is_refused() -> None:
    request = replace(VALID, node_taints=("kubernetes.azure.com/attestation-failed=true:NoExecute",))
    [violation] = check_pool(request)
    assert (violation.code, violation.target) == ("InvalidParameter", "properties.nodeTaints")
    assert violation.message == (
        "The value of parameter agentPoolProfile.nodeTaints is invalid. Error details: taint key(s) "
        "kubernetes.azure.com/attestation-failed of pool 'labelnp' use the prefix 'kubernetes.azure.com/'. "
        "AKS takes such taints on a pool, but here that prefix belongs to the attestation verdict's taints "
        "(pending until a node is attested, NoExecute when it fails), which a pool may neither set nor lift."
    )


@pytest.mark.parametrize("key", ["kubernetes.io/os", "node.kubernetes.io/instance-type"])
def test_labels_the_platform_sets_from_the_pool_are_refused(key: str) -> None:
    """The join sets them from osType and vmSize; a pool label giving them would fight it."""
    [violation] = check_pool(replace(VALID, node_labels=((key, "windows"),)))
    assert (violation.code, violation.target) == ("BadRequest", "properties.nodeLabels")
    assert f"Node label key(s) {key} of pool 'labelnp' are set on every node" in violation.message


def test_two_taints_with_one_key_and_effect_are_refused() -> None:
    """Kubernetes refuses a Node with two: refused before any VM boots."""
    repeated = ("sku=gpu:NoSchedule", "sku=cpu:NoSchedule", "sku=gpu:NoExecute")
    [violation] = check_pool(replace(VALID, node_taints=repeated))
    assert (violation.code, violation.target) == ("InvalidParameter", "properties.nodeTaints")
    assert "taint(s) sku=cpu:NoSchedule of pool 'labelnp' repeat the key and effect" in violation.message


def test_taints_parse_to_kubernetes_taints() -> None:
    assert parse_taint("sku=gpu:NoSchedule") == NodeTaint("sku", "gpu", "NoSchedule")
    assert parse_taint("dedicated:NoExecute") == NodeTaint("dedicated", "", "NoExecute")
    assert parse_taint("dedicated:NoExecute").to_dict() == {"key": "dedicated", "effect": "NoExecute"}  # type: ignore[union-attr]


@pytest.mark.parametrize("max_pods", [0, 9, 251, 1000])
def test_max_pods_out_of_range_is_refused(max_pods: int) -> None:
    [violation] = check_pool(replace(VALID, max_pods=max_pods))
    assert (violation.code, violation.target) == ("InvalidParameter", "properties.maxPods")
    assert f"maxPods {max_pods} of pool 'labelnp' is out of range: use 10 to 250" in violation.message


def test_max_pods_cannot_change_but_labels_and_taints_can() -> None:
    update = replace(VALID, max_pods=50, previous=VALID)
    assert codes(update) == [("PropertyChangeNotAllowed", "properties.maxPods")]
    relabelled = replace(VALID, node_labels=(("dept", "IT"),), node_taints=(), previous=VALID)
    assert check_pool(relabelled) == []


PREFIX = ".".join(["a" * 63] * 3) + "." + "a" * 61  # a DNS subdomain of 253 characters


def longest_taints(count: int) -> tuple[str, ...]:
    """`count` distinct taints of the greatest length a taint may have (key prefix 253, name 63, value 63)."""
    return tuple(f"{PREFIX}/{'n' * 60}{i:03d}={'v' * 63}:PreferNoSchedule" for i in range(count))


def test_taints_that_would_not_fit_the_join_bundle_are_refused_at_the_request() -> None:
    """The API's 50 taints at their greatest length fit the join bundle the agent accepts; more bytes than
    its room are refused before any node joins (the control layer has no count of its own)."""
    assert check_pool(replace(VALID, node_taints=longest_taints(MAX_NODE_TAINTS))) == []
    assert join_taints_size(longest_taints(MAX_NODE_TAINTS)) <= MAX_REGISTRATION_TAINTS_SIZE
    [violation] = check_pool(replace(VALID, node_taints=longest_taints(60)))
    assert (violation.code, violation.target) == ("InvalidParameter", "properties.nodeTaints")
    size = join_taints_size(longest_taints(60))
    assert (
        f"the nodeTaints of pool 'labelnp' take {size} bytes in the kubelet configuration"
        in violation.message
    )
    assert f"at most {MAX_REGISTRATION_TAINTS_SIZE} fit" in violation.message


def test_taints_filling_their_room_make_a_join_bundle_the_agent_accepts(tmp_path: Path) -> None:
    """The room is right: the longest node name and cluster FQDN, the cluster's real CA and credentials
    and taints just within MAX_REGISTRATION_TAINTS_SIZE make a bundle within MAX_JOIN_BUNDLE_SIZE."""
    fqdn = f"{'k' * 54}-{'r' * 12}-{'0' * 6}.hcp.southcentralus.trustedlaunch.internal"
    pki = create_cluster_pki(tmp_path / "pki", fqdn)
    name = f"aks-{'p' * 12}-{'9' * 8}-vmss{'9' * 6}"
    taints = next(
        taints
        for count in range(100, 0, -1)
        if join_taints_size(taints := longest_taints(count)) <= MAX_REGISTRATION_TAINTS_SIZE
    )
    assert join_taints_size(taints) > MAX_REGISTRATION_TAINTS_SIZE - 500  # the room filled
    join = KubeletJoin(
        name,
        fqdn,
        pki.ca_cert.read_bytes(),
        issue_kubelet_credentials(pki, name, timedelta(days=3)),
        65535,
        taints=(ATTESTATION_PENDING_TAINT, *pool_taints(list(taints))),
        max_pods=250,
    )
    assert len(join.bundle()) <= MAX_JOIN_BUNDLE_SIZE
