"""An operator's container images reach the nodes, and a node keeps the policy of the build it booted: an OCI
image archive put into the reconciler's `{state dir}/container-images` is in the root filesystem of the
release image the reconciler builds (dm-verity, its root hash pinned by the policy), and a pod on a real
joined Secure Boot + vTPM node runs it without any registry; another archive added later makes another build
of the same image version (another root hash), and the running node, booted from the first build, still
passes its on-demand re-attestation (its provisioning policy is kept), as it would not against the new one."""

from __future__ import annotations

import io
import shutil
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cached_kubectl import kubectl
from lightkube import Client
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod
from monitoring_helpers import create_trusted_cluster
from reconciler_helpers import SUB, cluster_admin, nodes, processes_under, run_until_finished, wait_until
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.policy import Policy
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.node_images import OPERATOR_IMAGES_DIR
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ResourcePath, delete_cluster
from trustedlaunch.node.container_images import PATH_ENV, oci_image_archive
from trustedlaunch.node.image import BUSYBOX
from trustedlaunch.store.models import AttestationRecord, Node

pytestmark = pytest.mark.slow
CLUSTER = "imagescluster"
CREATE_SECONDS = 1200.0  # control plane, then a node booted, attested and joined under TCG on 2 busy cores
HELLO = "registry.example/team/hello:1"


def operator_archive(directory: Path, reference: str, greeting: str) -> Path:
    """An operator's OCI image archive: busybox at /bin/busybox, its entrypoint echoing `greeting`."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("bin/busybox")
        data = BUSYBOX.read_bytes()
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    image = oci_image_archive(
        reference,
        [layer.getvalue()],
        {"Entrypoint": ["/bin/busybox", "echo", greeting], "Env": [PATH_ENV], "WorkingDir": "/"},
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / image.file_name
    path.write_bytes(image.data)
    return path


@pytest.fixture
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    database = f"sqlite:///{reconciler_base / 'images.db'}"
    engine, factory = open_store(database, reconciler_base / "images-token")
    try:
        yield factory
    finally:
        engine.dispose()


def pod_phase(client: Client, name: str) -> str:
    status = client.get(Pod, name, namespace="default").status
    return (status.phase if status is not None else None) or "Pending"


def the_node(sessions: sessionmaker[Session]) -> Node:
    [node] = nodes(sessions)
    return node


def latest_attestation(sessions: sessionmaker[Session]) -> tuple[int, str, object] | None:
    """The newest attestation record's id, status and findings."""
    with sessions() as session:
        record = session.scalars(select(AttestationRecord).order_by(AttestationRecord.id.desc())).first()
        return None if record is None else (record.id, record.status, record.findings)


def test_an_operator_image_runs_on_a_node_which_keeps_its_policy_when_images_change(
    sessions: sessionmaker[Session], reconciler_base: Path, kubernetes_release: KubernetesRelease
) -> None:
    state_dir = reconciler_base / "images"
    operator_archive(state_dir / OPERATOR_IMAGES_DIR, HELLO, "hello from the operator's image")
    _, create = create_trusted_cluster(sessions, CLUSTER)
    reconciler = Reconciler(
        sessions, state_dir, cluster_planes=ClusterPlanes(state_dir), attestation_interval=0, boot_timeout=300
    )
    client: Client | None = None
    try:
        created = run_until_finished(reconciler, sessions, create.id, CREATE_SECONDS)
        assert created.status == "Succeeded", created.error
        node = the_node(sessions)
        assert node.attestation_policy is not None and "joined its cluster" in node.message
        booted = Policy.from_json(node.attestation_policy)
        assert booted.root_filesystem is not None
        client, kubeconfig = cluster_admin(sessions)
        client.create(
            Pod(
                metadata=ObjectMeta(name="hello", namespace="default"),
                spec=PodSpec(
                    nodeSelector={"kubernetes.azure.com/trusted-launch": "true"},
                    restartPolicy="Never",
                    automountServiceAccountToken=False,
                    terminationGracePeriodSeconds=0,
                    containers=[Container(name="hello", image=HELLO, imagePullPolicy="IfNotPresent")],
                ),
            )
        )
        deadline = time.monotonic() + 300
        while (phase := pod_phase(client, "hello")) not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, f"pod hello still {phase}"
            time.sleep(1.0)
        assert phase == "Succeeded"  # the image came from the node's root filesystem: no registry
        logs = kubectl(kubernetes_release, kubeconfig, "logs", "hello", "-n", "default").stdout
        assert logs.strip() == "hello from the operator's image"

        # another operator image: the next use of the image version builds it anew (another root hash)
        operator_archive(state_dir / OPERATOR_IMAGES_DIR, "registry.example/team/other:1", "other")
        rebuilt = reconciler._image(node.node_image_version)
        assert rebuilt.rootfs is not None and rebuilt.rootfs.root_hash != booted.root_filesystem.root_hash
        with sessions.begin() as session:
            session.get_one(Node, node.id).attestation_requested_at = datetime.now(UTC)
        before = latest_attestation(sessions)
        wait_until(
            lambda: reconciler.run_once() is not None and latest_attestation(sessions) != before,
            300,
            "the on-demand re-attestation",
        )
        record = latest_attestation(sessions)
        assert record is not None and record[1] == "Attested", record
        assert the_node(sessions).attestation_policy == node.attestation_policy  # kept, not the new build's
    finally:
        if client is not None:
            client.close()
        with sessions.begin() as session:
            deletion = delete_cluster(session, ResourcePath(SUB, "rg", CLUSTER))
        if deletion is not None:
            run_until_finished(reconciler, sessions, deletion.id, 300.0)
        reconciler.release()
        shutil.rmtree(state_dir / OPERATOR_IMAGES_DIR, ignore_errors=True)
    assert processes_under(state_dir) == []
