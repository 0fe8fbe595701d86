"""The node's root filesystem: a reproducible squashfs of kubelet, the container runtime and busybox, under a
dm-verity hash tree whose root hash the node image records; read back with the real unsquashfs, veritysetup
and containerd."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from node_helpers import initramfs_listing

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.policy import Policy, RootFilesystemRule
from trustedlaunch.node.image import (
    DEFAULT_CMDLINE,
    ROOTFS_MODULES,
    NodeImage,
    NodeImageError,
    build_node_image,
    has_current_agent,
    refresh_agent,
)
from trustedlaunch.node.qemu import FIRMWARE
from trustedlaunch.node.rootfs import (
    CONTAINERD_CONFIG,
    IMAGE_ARCHIVES_DIR,
    ROOTFS_NAME,
    VERITY_BLOCK_SIZE,
    Rootfs,
    RootfsError,
    RootfsInputs,
    build_rootfs,
    verify_rootfs,
)


def rootfs_of(image: NodeImage) -> Rootfs:
    assert image.rootfs is not None
    return image.rootfs


def listing(rootfs: Rootfs) -> dict[str, list[str]]:
    """Path -> `ls -l`-like fields (mode, owner, size, date, time) of every member, from unsquashfs."""
    output = subprocess.run(
        ["unsquashfs", "-lln", "-d", "", str(rootfs.path)], capture_output=True, text=True, check=True
    ).stdout
    members = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0][0] in "-dlc":
            members[fields[5]] = fields
    return members


def member(rootfs: Rootfs, path: str) -> bytes:
    return subprocess.run(
        ["unsquashfs", "-cat", str(rootfs.path), path], capture_output=True, check=True
    ).stdout


def file_sha256(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def test_same_inputs_give_the_same_root_hash(
    rootfs_node_image: NodeImage, rootfs_inputs: RootfsInputs, tmp_path: Path
) -> None:
    first = rootfs_of(rootfs_node_image)
    again_image = build_node_image(tmp_path / "again", rootfs=rootfs_inputs)
    again = rootfs_of(again_image)
    assert again.root_hash == first.root_hash
    assert (again.sha256, again.salt, again.data_size, again.hash_size) == (
        first.sha256,
        first.salt,
        first.data_size,
        first.hash_size,
    )
    assert file_sha256(again.path) == file_sha256(first.path)
    assert again_image.version == rootfs_node_image.version
    assert again_image.files == rootfs_node_image.files  # the initramfs with its modules and dmsetup too


def test_image_verifies_and_a_flipped_byte_does_not(rootfs_node_image: NodeImage, tmp_path: Path) -> None:
    rootfs = rootfs_of(rootfs_node_image)
    verify_rootfs(rootfs)
    tampered = dataclasses.replace(rootfs, path=tmp_path / ROOTFS_NAME)
    shutil.copyfile(rootfs.path, tampered.path)
    with tampered.path.open("r+b") as image:
        image.seek(rootfs.data_size // 2)
        byte = image.read(1)
        image.seek(rootfs.data_size // 2)
        image.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(RootfsError, match=f"{tampered.path} does not match its root hash {rootfs.root_hash}"):
        verify_rootfs(tampered)


def test_holds_the_runtime_kubelet_and_busybox_owned_by_root_at_time_zero(
    rootfs_node_image: NodeImage, rootfs_inputs: RootfsInputs
) -> None:
    rootfs = rootfs_of(rootfs_node_image)
    members = listing(rootfs)
    for name, source in rootfs_inputs.binaries.items():
        assert members[f"/usr/bin/{name}"][0] == "-rwxr-xr-x"
        assert int(members[f"/usr/bin/{name}"][2]) == source.stat().st_size
    for name in rootfs_inputs.cni_plugins:
        assert members[f"/opt/cni/bin/{name}"][0] == "-rwxr-xr-x"
    containerd = rootfs_inputs.binaries["containerd"]
    assert hashlib.sha256(member(rootfs, "usr/bin/containerd")).hexdigest() == file_sha256(containerd)
    assert members["/bin/sh"][0][0] == "l" and members["/bin/sh"][-1] == "/bin/busybox"
    assert members["/bin/busybox"][0] == "-rwxr-xr-x"
    for mount_point in ("/proc", "/sys", "/dev", "/run", "/var", "/etc/kubernetes", "/etc/cni/net.d"):
        assert members[mount_point][0] == "drwxr-xr-x"
    assert members["/tmp"][0] == "drwxrwxrwt"
    assert members[f"/{IMAGE_ARCHIVES_DIR}"][0][0] == "d"
    assert {fields[1] for fields in members.values()} == {"0/0"}
    assert {fields[3] for fields in members.values()} == {"1970-01-01"}
    assert member(rootfs, "etc/passwd").startswith(b"root:x:0:0:")


def test_containerd_reads_its_configuration(
    rootfs_node_image: NodeImage, rootfs_inputs: RootfsInputs, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(member(rootfs_of(rootfs_node_image), CONTAINERD_CONFIG))
    dump = subprocess.run(
        [str(rootfs_inputs.binaries["containerd"]), "--config", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "version = 4" in dump
    for setting in (
        "snapshotter = 'overlayfs'",
        "SystemdCgroup = false",
        "BinaryName = '/usr/bin/runc'",
        "bin_dirs = ['/opt/cni/bin']",
        "conf_dir = '/etc/cni/net.d'",
        "sandbox = 'registry.k8s.io/pause:3.10.2'",
    ):
        assert setting in dump


def test_image_archives_are_preloaded_and_change_the_root_hash(
    rootfs_node_image: NodeImage, rootfs_inputs: RootfsInputs, tmp_path: Path
) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "test.tar").write_bytes(b"an OCI archive stand-in")
    (archives / "notes.txt").write_text("not an archive: left out")
    with_archive = build_rootfs(
        tmp_path / ROOTFS_NAME, dataclasses.replace(rootfs_inputs, image_archives=archives)
    )
    assert member(with_archive, f"{IMAGE_ARCHIVES_DIR}/test.tar") == b"an OCI archive stand-in"
    assert f"/{IMAGE_ARCHIVES_DIR}/notes.txt" not in listing(with_archive)
    assert with_archive.root_hash != rootfs_of(rootfs_node_image).root_hash


def test_missing_inputs_are_named(rootfs_inputs: RootfsInputs, tmp_path: Path) -> None:
    missing = tmp_path / "no-kubelet"
    binaries = {**rootfs_inputs.binaries, "kubelet": missing}
    with pytest.raises(RootfsError, match=f"{missing} is not a file"):
        build_rootfs(tmp_path / ROOTFS_NAME, dataclasses.replace(rootfs_inputs, binaries=binaries))
    without_runc = {name: path for name, path in rootfs_inputs.binaries.items() if name != "runc"}
    with pytest.raises(RootfsError, match="needs exactly kubelet, containerd"):
        build_rootfs(tmp_path / ROOTFS_NAME, dataclasses.replace(rootfs_inputs, binaries=without_runc))


def test_node_image_records_the_root_filesystem(
    rootfs_node_image: NodeImage, node_image: NodeImage, tmp_path: Path
) -> None:
    assert node_image.rootfs is None
    assert "rootfs" not in json.loads(node_image.metadata_path.read_text())
    rootfs = rootfs_of(rootfs_node_image)
    entry = json.loads(rootfs_node_image.metadata_path.read_text())["rootfs"]
    assert entry == {
        "path": ROOTFS_NAME,
        "sha256": rootfs.sha256,
        "dataSize": rootfs.data_size,
        "hashSize": rootfs.hash_size,
        "rootHash": rootfs.root_hash,
        "salt": rootfs.sha256,
        "blockSize": VERITY_BLOCK_SIZE,
        "hashAlgorithm": "sha256",
    }
    assert rootfs.path == rootfs_node_image.metadata_path.parent / ROOTFS_NAME
    assert rootfs.data_size + rootfs.hash_size == rootfs.path.stat().st_size
    assert file_sha256(rootfs.path) != rootfs.sha256  # the digest covers the squashfs data, not the tree
    assert NodeImage.load(rootfs_node_image.metadata_path.parent) == rootfs_node_image
    assert rootfs_node_image.version != node_image.version
    for name in ("EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi", "vmlinuz"):
        assert rootfs_node_image.files[name] == node_image.files[name]
    assert has_current_agent(rootfs_node_image)
    refreshed = refresh_agent(rootfs_node_image, tmp_path / "refreshed")
    assert refreshed.version == rootfs_node_image.version
    assert refreshed.files == rootfs_node_image.files
    assert rootfs_of(refreshed).path == tmp_path / "refreshed" / ROOTFS_NAME
    verify_rootfs(rootfs_of(refreshed))


def test_a_malformed_root_filesystem_entry_is_refused(rootfs_node_image: NodeImage, tmp_path: Path) -> None:
    metadata = json.loads(rootfs_node_image.metadata_path.read_text())
    metadata["rootfs"]["path"] = "../elsewhere.img"
    (tmp_path / "node-image.json").write_text(json.dumps(metadata))
    with pytest.raises(NodeImageError, match=r"not a node image metadata file.*not a plain file name"):
        NodeImage.load(tmp_path)


def test_command_line_carries_the_root_hash(rootfs_node_image: NodeImage) -> None:
    rootfs = rootfs_of(rootfs_node_image)
    assert rootfs_node_image.kernel_cmdline == (
        f"{DEFAULT_CMDLINE} trustedlaunch.verity_roothash={rootfs.root_hash} "
        f"trustedlaunch.verity_salt={rootfs.salt} trustedlaunch.verity_blocks={rootfs.data_blocks}"
    )
    config = (rootfs_node_image.esp_dir / "EFI/debian/grub.cfg").read_text()
    assert f"chainloader /vmlinuz initrd=\\initrd.gz {rootfs_node_image.kernel_cmdline}\n" in config


def test_the_predicted_policy_pins_the_root_hash(rootfs_node_image: NodeImage, node_image: NodeImage) -> None:
    varstore = FIRMWARE[True][1]
    policy = policy_for_image(rootfs_node_image.esp_dir, varstore, node_image="v1")
    assert policy.root_filesystem == RootFilesystemRule(rootfs_of(rootfs_node_image).root_hash, "v1")
    assert Policy.from_json(policy.to_json()) == policy
    assert policy_for_image(node_image.esp_dir, varstore).root_filesystem is None  # no root filesystem


def test_initramfs_holds_the_verity_modules_and_dmsetup(rootfs_node_image: NodeImage) -> None:
    members = initramfs_listing(rootfs_node_image)
    modules = sorted(name.removeprefix("lib/modules/") for name in members if name.startswith("lib/modules/"))
    for name in ROOTFS_MODULES:
        assert f"{name}.ko" in modules
    assert {"dm-mod.ko", "dm-bufio.ko", "virtio.ko", "virtio_ring.ko"} <= set(modules)  # dependencies
    assert members["usr/sbin/dmsetup"] == "-"
    assert members["lib64/ld-linux-x86-64.so.2"] == "-"
    libraries = {name for name in members if name.startswith("lib/x86_64-linux-gnu/")}
    assert "lib/x86_64-linux-gnu/libdevmapper.so.1.02.1" in libraries
    assert not any("tss2" in name or "tpm" in name for name in members)  # still no TPM software
    assert members["sysroot"] == "d"
