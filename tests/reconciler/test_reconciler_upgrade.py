"""Upgrading trustedlaunch under a state dir whose node image an older version built: `refresh_agent` keeps an
image's boot chain (shim, GRUB, kernel, command line) and gives it the current agent; an image built before
the root filesystem (no kubelet, no container runtime) is built anew as the release image, and a node booted
from it opens its verified root filesystem and is attested against the new image's root hash. One VM boot."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconciler_helpers import SUB, nodes, run_until_finished, trusted_launch_store
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.policy import Policy, RootFilesystemRule
from trustedlaunch.control.node_images import is_release_image
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster
from trustedlaunch.node.image import BUSYBOX, NodeImage, build_node_image, has_current_agent, refresh_agent
from trustedlaunch.node.initramfs import Initramfs
from trustedlaunch.store.models import ImagePolicy

PATH = ResourcePath(SUB, "rg", "upgradedcluster")
SIGNED_CHAIN = ("EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi", "vmlinuz")
BOOT_CHAIN = (*SIGNED_CHAIN, "EFI/debian/grub.cfg")
OLD_CMDLINE = "console=ttyS0 panic=-1 loglevel=3"


def image_with_another_agent(out_dir: Path) -> NodeImage:
    """A node image as an older trustedlaunch left it: the same boot chain (its own command line), and an
    initramfs whose /init is an agent that never answers this host's requests."""
    build_node_image(out_dir, cmdline=OLD_CMDLINE)
    tree = Initramfs()
    for directory in ("bin", "dev"):
        tree.directory(directory)
    tree.char_device("dev/console", 5, 1)
    tree.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    tree.symlink("bin/sh", "/bin/busybox")
    tree.symlink("bin/sleep", "/bin/busybox")
    init = b"#!/bin/sh\necho 'agent of another protocol' >/dev/console\nexec sleep 100000\n"
    tree.file("init", init, 0o755)
    initramfs = tree.gzip()
    (out_dir / "esp" / "initrd.gz").write_bytes(initramfs)
    metadata_path = out_dir / "node-image.json"
    metadata = json.loads(metadata_path.read_text())
    for item in metadata["files"]:
        if item["path"] == "initrd.gz":
            item["sha256"], item["size"] = hashlib.sha256(initramfs).hexdigest(), len(initramfs)
    metadata_path.write_text(json.dumps(metadata))
    return NodeImage.load(out_dir)


def boot_chain(image: NodeImage, names: tuple[str, ...] = BOOT_CHAIN) -> dict[str, bytes]:
    return {name: (image.esp_dir / name).read_bytes() for name in names}


def test_refresh_agent_replaces_the_initramfs_only(tmp_path: Path) -> None:
    old = image_with_another_agent(tmp_path / "old")
    assert not has_current_agent(old)
    fresh = refresh_agent(old, tmp_path / "fresh")
    assert has_current_agent(fresh) and fresh.files["initrd.gz"] != old.files["initrd.gz"]
    assert boot_chain(fresh) == boot_chain(old)
    assert fresh.kernel_cmdline == OLD_CMDLINE
    old_metadata, new_metadata = (json.loads(i.metadata_path.read_text()) for i in (old, fresh))
    assert new_metadata["kernel"] == old_metadata["kernel"]
    assert NodeImage.load(tmp_path / "fresh") == fresh
    new = build_node_image(tmp_path / "new", cmdline=OLD_CMDLINE)  # the same boot files, the current agent
    assert (fresh.files, fresh.version) == (new.files, new.version)


@pytest.fixture(scope="module")
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    with trusted_launch_store(f"sqlite:///{reconciler_base / 'upgrade.db'}") as factory:
        yield factory


@pytest.mark.slow
def test_an_image_without_root_filesystem_is_built_anew_and_its_node_attested(
    sessions: sessionmaker[Session], reconciler_base: Path
) -> None:
    state_dir = reconciler_base / "upgrade-state"
    pool = PoolSpec(
        "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
    )
    with sessions.begin() as session:
        cluster, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[pool]))
        image_version = cluster.agent_pools[0].node_image_version
    image_dir = state_dir / "images" / image_version
    old = image_with_another_agent(image_dir)  # the cached build an older trustedlaunch made
    assert old.rootfs is None and not is_release_image(old)
    reconciler = Reconciler(sessions, state_dir, boot_timeout=180)
    try:
        created = run_until_finished(reconciler, sessions, create.id, 400)
        assert created.status == "Succeeded", created.error
        (node,) = nodes(sessions)
        assert (node.state, node.attestation_status) == ("Ready", "Attested")
        upgraded = NodeImage.load(image_dir)
        assert is_release_image(upgraded) and has_current_agent(upgraded) and upgraded.rootfs is not None
        assert boot_chain(upgraded, SIGNED_CHAIN) == boot_chain(old, SIGNED_CHAIN)  # Debian's signed files
        assert upgraded.version != old.version
        console = (Path(str(node.run_dir)) / "console.log").read_text(errors="replace")
        assert "trustedlaunch: root filesystem verified" in console
        with sessions() as session:
            stored = session.get_one(ImagePolicy, (image_version, True))
            policy = Policy.from_json(stored.policy)
        assert policy.root_filesystem == RootFilesystemRule(upgraded.rootfs.root_hash, image_version)
        assert sorted(path.name for path in image_dir.parent.iterdir()) == [image_version]  # no scratch left

        with sessions.begin() as session:
            deletion = delete_cluster(session, PATH)
        assert deletion is not None
        assert run_until_finished(reconciler, sessions, deletion.id, 400).status == "Succeeded"
    finally:
        reconciler.release()
