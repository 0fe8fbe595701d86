"""A node that booted an older agent (an initramfs without the KUBELETCERTS request, as nodes provisioned
before kubelet credential renewal run) on a real VM: the host knows it from the image (has_current_agent), and
the agent itself refuses the renewal as an unknown request; the reconciler then schedules the node's reimage
onto the current image (an Update operation on its pool whose rolling reimage drains and replaces it) instead
of letting its kubelet credential expire, with the reason on the node, the operation and its plan's step.
The credentials come from a real cluster CA (the session's hosted control plane)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from kube_apiserver import running_plane_record
from older_agent import older_agent_initramfs
from sqlalchemy import select

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.node_join import NodeAgentOutdatedError
from trustedlaunch.control.node_plan import Action, plan_next_step
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.reconciler import Reconciler, _desired, _observed
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.node.channel import AgentOutdatedError
from trustedlaunch.node.image import NodeImage, has_current_agent
from trustedlaunch.node.qemu import NodeVM
from trustedlaunch.store.models import AgentPool, Node, Operation

pytestmark = pytest.mark.slow


def older_agent_image(image: NodeImage, out_dir: Path) -> NodeImage:
    """A copy of `image` in `out_dir` whose initramfs agent does not know KUBELETCERTS, its metadata
    recording that initramfs (as an image an older trustedlaunch built records its own)."""
    shutil.copytree(image.esp_dir.parent, out_dir)
    initrd = out_dir / "esp" / "initrd.gz"
    older = older_agent_initramfs(initrd.read_bytes())
    initrd.write_bytes(older)
    metadata_path = out_dir / image.metadata_path.name
    metadata = json.loads(metadata_path.read_text())
    for item in metadata["files"]:
        if item["path"] == "initrd.gz":
            item["sha256"] = hashlib.sha256(older).hexdigest()
    metadata_path.write_text(json.dumps(metadata))
    return NodeImage.load(out_dir)


def test_a_node_with_an_older_agent_is_scheduled_for_reimage_not_left_to_expire(
    node_image: NodeImage,
    node_base: Path,
    kube_apiserver: HostedControlPlane,
    kubernetes_release: KubernetesRelease,
) -> None:
    older = older_agent_image(node_image, node_base / "older-agent-image")
    assert not has_current_agent(older) and has_current_agent(node_image)

    engine, sessions = open_store(f"sqlite:///{node_base / 'older-agent.db'}", None)
    planes = ClusterPlanes(node_base / "older-agent-state", release=lambda: kubernetes_release)
    reconciler = Reconciler(sessions, node_base / "older-agent-state", cluster_planes=planes)
    try:
        with sessions.begin() as session:
            path = ResourcePath("00000000-0000-0000-0000-000000000000", "rg", "older")
            pools = [PoolSpec(name="sys", mode="System", count=1)]
            cluster, operation, _ = put_cluster(
                session, path, ClusterSpec(location="eastus", agent_pools=pools)
            )
            finish_operation(session, operation, "Succeeded")
            cluster.control_plane = running_plane_record(kube_apiserver)
            pool = session.scalars(select(AgentPool)).one()
            session.add(
                Node(
                    pool=pool,
                    ordinal=0,
                    name="aks-sys-older-0",
                    node_image_version=pool.node_image_version,
                    state="Ready",
                    enable_secure_boot=False,
                    enable_vtpm=False,
                    labels={},
                    kubelet_port=1,  # joined (as an earlier release joined it)
                )
            )
        with NodeVM(older, node_base / "vm-older-agent", secure_boot=False) as vm:
            vm.wait_ready(300)
            with pytest.raises(AgentOutdatedError, match="does not know the KUBELETCERTS request"):
                vm.agent().channel.renew_kubelet_credentials(b"bundle", 60)
            assert vm.agent().channel.ping("stillthere", 30)  # the rest of its protocol still works

            with sessions() as session:
                node = session.scalars(select(Node)).one()
                assert reconciler.joiner is not None
                with pytest.raises(NodeAgentOutdatedError):
                    reconciler.joiner.renew_credential(node, vm.agent().channel)
                reconciler._vms[node.id] = vm  # the VM the reconciler runs for the node
                message = reconciler._renew_credential(node)
                reconciler._vms.clear()
            assert "does not know the KUBELETCERTS request" in message and "reimage scheduled" in message

        with sessions() as session:
            node = session.scalars(select(Node)).one()
            assert node.reimage_reason is not None and "older node image" in node.reimage_reason
            (operation,) = session.scalars(select(Operation).where(Operation.status == "InProgress"))
            assert operation.kind == "Update" and operation.resource_id.endswith("/agentPools/sys")
            assert "reimaging node aks-sys-older-0" in operation.note and "older node image" in operation.note
            assert node.pool.provisioning_state == "Updating"
            step = plan_next_step(_desired(node.pool, False), [_observed(node)])
            assert (step.action, step.node_id) == (Action.REIMAGE, node.id)
            assert "cannot renew its kubelet credentials" in step.note
    finally:
        planes.close()
        engine.dispose()
