"""The node adapter against a real kube-apiserver (the session's hosted control plane), through a kubeconfig
file with the cluster admin's client certificate: Nodes are registered as a kubelet would, and what the
adapter did is read back from the API server. kube-controller-manager changes these Nodes too (its TTL
controller annotates them, its node lifecycle controller taints them), so only our keys are compared."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_apiserver import admin_client, read_node, register_node, taints_besides_the_node_lifecycle
from lightkube import Client
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.kubernetes import KubernetesAdapterError, KubernetesNodeAdapter, Taint
from trustedlaunch.control.labels import (
    LABEL_SECURE_BOOT,
    LABEL_TRUSTED_LAUNCH,
    LABEL_UPGRADE_STATUS,
    QUARANTINE_ANNOTATION,
    QUARANTINE_CORDON_ANNOTATION,
    QUARANTINE_TAINT_KEY,
)

pytestmark = pytest.mark.slow
TRUSTED = {LABEL_SECURE_BOOT: "true", LABEL_TRUSTED_LAUNCH: "true"}
FOREIGN_LABELS = {"kubernetes.azure.com/agentpool": "pool1"}
FOREIGN_TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoExecute"}
QUARANTINE_TAINT = {"key": QUARANTINE_TAINT_KEY, "value": "true", "effect": "NoExecute"}
ORDINALS = itertools.count()


@pytest.fixture
def client(kube_apiserver: HostedControlPlane) -> Iterator[Client]:
    with admin_client(kube_apiserver) as admin:
        yield admin


@pytest.fixture
def node_name(client: Client) -> Iterator[str]:
    """A Node of this test only, registered with trusted launch labels and a taint of someone else's."""
    name = f"aks-adapter-{next(ORDINALS)}"
    register_node(client, name, {**FOREIGN_LABELS, **TRUSTED}, [FOREIGN_TAINT])
    yield name
    client.delete(Node, name)


@pytest.fixture
def adapter(kube_apiserver: HostedControlPlane) -> Iterator[KubernetesNodeAdapter]:
    with KubernetesNodeAdapter(kube_apiserver.admin_kubeconfig) as node_adapter:
        yield node_adapter


def labels_of(node: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = node["metadata"].get("labels") or {}
    return labels


def test_quarantine_taints_cordons_and_removes_our_labels(
    client: Client, adapter: KubernetesNodeAdapter, node_name: str
) -> None:
    assert adapter.quarantine(node_name, "PCR4: grubx64.efi is not in the image policy")
    node = read_node(client, node_name)
    assert labels_of(node) == {"kubernetes.io/hostname": node_name, **FOREIGN_LABELS}
    assert node["metadata"]["annotations"][QUARANTINE_ANNOTATION] == (
        "PCR4: grubx64.efi is not in the image policy"
    )
    assert taints_besides_the_node_lifecycle(node) == [FOREIGN_TAINT, QUARANTINE_TAINT]
    assert node["spec"]["unschedulable"] is True
    assert (
        node["metadata"]["annotations"][QUARANTINE_CORDON_ANNOTATION] == "true"
    )  # the quarantine cordoned it

    assert not adapter.quarantine(node_name, "PCR4: grubx64.efi is not in the image policy")  # no patch sent


def test_restore_after_a_new_attestation_gives_the_labels_back(
    client: Client, adapter: KubernetesNodeAdapter, node_name: str
) -> None:
    registered = read_node(client, node_name)
    adapter.quarantine(node_name, "Secure Boot disabled")
    assert adapter.restore(node_name, TRUSTED)
    node = read_node(client, node_name)
    assert labels_of(node) == labels_of(registered)
    assert QUARANTINE_ANNOTATION not in (node["metadata"].get("annotations") or {})
    assert taints_besides_the_node_lifecycle(node) == [FOREIGN_TAINT]
    assert not node["spec"].get("unschedulable")

    assert not adapter.restore(node_name, TRUSTED)  # no patch sent


def test_a_node_quarantined_with_the_earlier_noschedule_taint_gets_the_noexecute_one(
    client: Client, adapter: KubernetesNodeAdapter, node_name: str
) -> None:
    """Earlier releases quarantined with effect NoSchedule: quarantining that node again replaces it by the
    NoExecute taint (one taint of our key, the operator's own NoExecute taint kept)."""
    earlier = {**QUARANTINE_TAINT, "effect": "NoSchedule"}
    client.patch(Node, node_name, {"spec": {"taints": [FOREIGN_TAINT, earlier]}}, patch_type=PatchType.MERGE)
    assert adapter.quarantine(node_name, "Secure Boot disabled")
    assert taints_besides_the_node_lifecycle(read_node(client, node_name)) == [
        FOREIGN_TAINT,
        QUARANTINE_TAINT,
    ]


def test_restore_leaves_a_node_cordoned_by_an_operator_cordoned(
    client: Client, adapter: KubernetesNodeAdapter, node_name: str
) -> None:
    client.patch(
        Node,
        node_name,
        {"spec": {"unschedulable": True}, "metadata": {"labels": dict.fromkeys(TRUSTED)}},
        patch_type=PatchType.MERGE,
    )
    assert adapter.restore(node_name, TRUSTED)
    node = read_node(client, node_name)
    assert labels_of(node) == {"kubernetes.io/hostname": node_name, **FOREIGN_LABELS, **TRUSTED}
    assert node["spec"]["unschedulable"] is True


def test_restore_leaves_a_cordon_the_quarantine_found_in_place(
    client: Client, adapter: KubernetesNodeAdapter, node_name: str
) -> None:
    """A node cordoned before its attestation failed (a failed drain, an operator): the quarantine records
    that it did not make the cordon, and the passing attestation later leaves the node cordoned."""
    client.patch(Node, node_name, {"spec": {"unschedulable": True}}, patch_type=PatchType.MERGE)
    assert adapter.quarantine(node_name, "PCR 7 differs from the policy")
    annotations = read_node(client, node_name)["metadata"]["annotations"]
    assert annotations[QUARANTINE_CORDON_ANNOTATION] == "false"
    assert not adapter.quarantine(node_name, "PCR 7 differs from the policy")  # the record is kept
    assert adapter.restore(node_name, TRUSTED)
    node = read_node(client, node_name)
    assert node["spec"]["unschedulable"] is True
    annotations = node["metadata"].get("annotations") or {}
    assert not {QUARANTINE_ANNOTATION, QUARANTINE_CORDON_ANNOTATION} & set(annotations)
    assert taints_besides_the_node_lifecycle(node) == [FOREIGN_TAINT]


def test_an_upgrade_hold_released_hands_its_cordon_to_the_quarantine(
    client: Client, adapter: KubernetesNodeAdapter, node_name: str
) -> None:
    """A drain cordoned the node, its attestation then failed (the quarantine found the cordon), and the
    upgrade released its hold: the cordon stays, now the quarantine's, and a passing attestation lifts it."""
    client.patch(Node, node_name, {"spec": {"unschedulable": True}}, patch_type=PatchType.MERGE)
    adapter.quarantine(node_name, "PCR 7 differs from the policy")
    assert adapter.release_upgrade_hold(node_name)
    node = read_node(client, node_name)
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["annotations"][QUARANTINE_CORDON_ANNOTATION] == "true"
    assert adapter.restore(node_name, TRUSTED)
    assert not read_node(client, node_name)["spec"].get("unschedulable")


def test_restore_decides_the_cordon_on_the_node_it_patches(
    client: Client, kube_apiserver: HostedControlPlane, node_name: str
) -> None:
    """An upgrade holds the quarantined node (its upgrade-status label) between the restore's first read and
    its patch: the patch of the stale node is refused (409) and the one recomputed on the fresh node keeps
    the node cordoned."""

    class UpgradeHoldsMeanwhile(KubernetesNodeAdapter):
        reads = 0

        def _read(self, name: str) -> dict[str, Any]:
            node = super()._read(name)
            self.reads += 1
            if self.reads == 1:
                hold = {"metadata": {"labels": {LABEL_UPGRADE_STATUS: "Quarantined"}}}
                client.patch(Node, name, hold, patch_type=PatchType.MERGE)
            return node

    with KubernetesNodeAdapter(kube_apiserver.admin_kubeconfig) as adapter:
        assert adapter.quarantine(node_name, "Secure Boot disabled")
    with UpgradeHoldsMeanwhile(kube_apiserver.admin_kubeconfig) as adapter:
        assert adapter.restore(node_name, TRUSTED)
        assert adapter.reads >= 2
    node = read_node(client, node_name)
    assert node["spec"]["unschedulable"] is True
    assert labels_of(node)[LABEL_UPGRADE_STATUS] == "Quarantined"
    assert QUARANTINE_ANNOTATION not in (node["metadata"].get("annotations") or {})


def test_apply_node_state_sets_our_keys_only(
    client: Client, adapter: KubernetesNodeAdapter, node_name: str
) -> None:
    maintenance = Taint(QUARANTINE_TAINT_KEY, "true", "PreferNoSchedule")
    assert adapter.apply_node_state(node_name, labels={LABEL_SECURE_BOOT: "true"}, taints=[maintenance])
    node = read_node(client, node_name)
    hostname = {"kubernetes.io/hostname": node_name}
    assert labels_of(node) == {**hostname, **FOREIGN_LABELS, LABEL_SECURE_BOOT: "true"}
    assert taints_besides_the_node_lifecycle(node) == [FOREIGN_TAINT, maintenance.to_dict()]
    with pytest.raises(ValueError, match="'agentpool' is not one of our keys"):
        adapter.apply_node_state(node_name, labels={"agentpool": "other"})
    assert "agentpool" not in labels_of(read_node(client, node_name))


def test_a_change_made_meanwhile_is_kept_and_the_patch_recomputed(
    client: Client, kube_apiserver: HostedControlPlane, node_name: str
) -> None:
    """An operator labels the node between the adapter's read and its patch: kube-apiserver refuses the
    patch of the stale resourceVersion (409), the adapter reads again and patches the fresh node."""

    class OperatorLabelsMeanwhile(KubernetesNodeAdapter):
        reads = 0

        def _read(self, name: str) -> dict[str, Any]:
            node = super()._read(name)
            self.reads += 1
            if self.reads == 1:
                client.patch(
                    Node, name, {"metadata": {"labels": {"team": "payments"}}}, patch_type=PatchType.MERGE
                )
            return node

    with OperatorLabelsMeanwhile(kube_apiserver.admin_kubeconfig) as adapter:
        assert adapter.quarantine(node_name, "Secure Boot disabled")
        assert adapter.reads >= 2  # more if a controller changed the node meanwhile too
    node = read_node(client, node_name)
    assert labels_of(node) == {"kubernetes.io/hostname": node_name, **FOREIGN_LABELS, "team": "payments"}
    assert node["spec"]["unschedulable"] is True


def test_unknown_node_is_an_error_naming_it(adapter: KubernetesNodeAdapter) -> None:
    with pytest.raises(KubernetesAdapterError, match='node aks-gone-7: 404 nodes "aks-gone-7" not found'):
        adapter.quarantine("aks-gone-7", "Secure Boot disabled")


def write_contexts(path: Path, admin_kubeconfig: Path, current: str) -> Path:
    """A kubeconfig with two contexts: `down` (nothing listens there, a wrong token) and `ours` (the
    cluster admin's, from `admin_kubeconfig`)."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "down", "cluster": {"server": "http://127.0.0.1:9"}},
                    {"name": "ours", "cluster": admin["clusters"][0]["cluster"]},
                ],
                "users": [
                    {"name": "down", "user": {"token": "wrong"}},
                    {"name": "ours", "user": admin["users"][0]["user"]},
                ],
                "contexts": [
                    {"name": name, "context": {"cluster": name, "user": name}} for name in ("down", "ours")
                ],
                "current-context": current,
            }
        )
    )
    return path


def test_unreachable_api_server_is_an_error_naming_the_node(
    kube_apiserver: HostedControlPlane, tmp_path: Path
) -> None:
    kubeconfig = write_contexts(tmp_path / "kubeconfig", kube_apiserver.admin_kubeconfig, "down")
    with (
        KubernetesNodeAdapter(kubeconfig) as adapter,
        pytest.raises(KubernetesAdapterError, match="node aks-pool1-0: ConnectError"),
    ):
        adapter.quarantine("aks-pool1-0", "Secure Boot disabled")


def test_context_selects_the_cluster_and_credentials(
    client: Client, kube_apiserver: HostedControlPlane, node_name: str, tmp_path: Path
) -> None:
    kubeconfig = write_contexts(tmp_path / "kubeconfig", kube_apiserver.admin_kubeconfig, "down")
    with KubernetesNodeAdapter(kubeconfig, context="ours") as adapter:
        assert adapter.quarantine(node_name, "Secure Boot disabled")
    assert read_node(client, node_name)["spec"]["unschedulable"] is True
    with pytest.raises(KubernetesAdapterError, match="Context 'missing' not found"):
        KubernetesNodeAdapter(kubeconfig, context="missing")


def test_restore_lifts_a_quarantine_an_earlier_release_wrote(
    client: Client, adapter: KubernetesNodeAdapter, node_name: str
) -> None:
    """Nodes quarantined before the AKS label keys carry trustedlaunch.io/ keys: a node that attests again
    loses them all and is uncordoned; the adapter never sets such a key."""
    legacy_taint = {"key": "trustedlaunch.io/attestation-failed", "value": "true", "effect": "NoSchedule"}
    registered = read_node(client, node_name)
    client.patch(
        Node,
        node_name,
        {
            "metadata": {
                "labels": {"trustedlaunch.io/trusted-launch": "true", **dict.fromkeys(TRUSTED)},
                "annotations": {"trustedlaunch.io/quarantine-reason": "PCR7: Secure Boot disabled"},
            },
            "spec": {"taints": [FOREIGN_TAINT, legacy_taint], "unschedulable": True},
        },
        patch_type=PatchType.MERGE,
    )
    assert adapter.restore(node_name, TRUSTED)
    node = read_node(client, node_name)
    assert labels_of(node) == labels_of(registered)
    annotations = node["metadata"].get("annotations") or {}
    assert not {QUARANTINE_ANNOTATION, "trustedlaunch.io/quarantine-reason"} & set(annotations)
    assert taints_besides_the_node_lifecycle(node) == [FOREIGN_TAINT]
    assert not node["spec"].get("unschedulable")
    with pytest.raises(ValueError, match=r"'trustedlaunch\.io/secure-boot' is not one of our keys"):
        adapter.apply_node_state(node_name, labels={"trustedlaunch.io/secure-boot": "true"})
