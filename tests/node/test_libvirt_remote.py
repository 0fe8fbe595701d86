"""The libvirt driver for hosts that share none of our files: a host in its own network namespace, reached
over qemu+tcp:// from the client namespace where the driver runs (tests/node/libvirt_remote_client.py), boots
a Secure Boot node from the image volumes the driver uploaded, with the host's own vTPM; the domain names none
of the client's paths, the console is pumped to the client, attestation passes with the host's EK CA (and
fails with the platform CA), a second node reuses the volumes, a dm-verity root filesystem opens from its
volume, an unsigned kernel's boot failure shows on the pumped console, and destroying the nodes leaves only
the image volumes."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from node_helpers import unsigned_copy

from trustedlaunch.node.image import NodeImage, build_node_image, default_kernel
from trustedlaunch.node.libvirt_host import LibvirtHost, NamespaceNetwork
from trustedlaunch.node.libvirt_volumes import POOL_NAME
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = 600.0  # generous: TCG on two cores shared with other VM tests
CLIENT = Path(__file__).with_name("libvirt_remote_client.py")


def test_node_on_a_remote_host_boots_from_volumes_with_the_hosts_vtpm(
    node_image: NodeImage, rootfs_node_image: NodeImage, node_ek_ca: EkCa
) -> None:
    network = NamespaceNetwork(f"tl-{secrets.token_hex(3)}")
    base = Path(tempfile.mkdtemp(prefix="tl-lvr-"))
    try:
        namespace, address = network.add_host()
        host_ca = create_ek_ca(base / "host-ek-ca")
        host = LibvirtHost(base / "host", namespace=namespace, address=address, ek_ca=host_ca)
        try:
            host.start()
            kernel = unsigned_copy(default_kernel(), base / "vmlinuz-unsigned")
            unsigned_image = build_node_image(base / "image-unsigned", kernel=kernel)
            images = (node_image, rootfs_node_image, unsigned_image)
            cas = (host_ca.directory, node_ek_ca.directory)
            paths = (base / "client", *cas, *(image.esp_dir.parent for image in images))
            client = [sys.executable, str(CLIENT), host.tcp_uri, *map(str, paths)]
            result = subprocess.run(
                ["ip", "netns", "exec", network.client, *client],
                capture_output=True,
                text=True,
                timeout=2 * BOOT_TIMEOUT,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            outcome = json.loads(result.stdout.splitlines()[-1])
            assert sorted(name.split("-")[0] for name in outcome["uploaded"]) == ["esp", "ovmf", "ovmf"]
            assert outcome["local_paths_in_domain"] == []
            assert "UEFI Secure Boot is enabled" in outcome["console"]
            assert "trustedlaunch-agent ready" in outcome["console"]
            assert outcome["host_ca"] == {"ok": True, "findings": []}
            assert not outcome["platform_ca"]["ok"]
            assert any("EK" in finding for finding in outcome["platform_ca"]["findings"])
            assert outcome["adopted_answers"] and not outcome["adopted_elsewhere"]
            assert outcome["second_running"] and outcome["second_volumes_same"]
            assert outcome["second_uploaded"] == []  # checked by download, not uploaded again
            assert outcome["rootfs"] == "verified"  # the dm-verity root filesystem, a volume too
            assert outcome["rootfs_volume"].startswith("rootfs-")
            assert "bad shim signature" in outcome["unsigned_failure"]  # seen on the pumped console
            assert outcome["unsigned_diagnosis"] == ["kernel", "NotSigned"]  # offline, on image + template
            pool = host.base / "lib" / "images" / POOL_NAME
            first_node = set(outcome["uploaded"])
            assert outcome["rootfs_volume"] in {path.name for path in pool.iterdir()} - first_node
            code, template = (pool / name for name in sorted(outcome["uploaded"])[1:])
            assert outcome["firmware"] == [
                code.name.removeprefix("ovmf-code-"),
                template.name.removeprefix("ovmf-vars-"),
            ]
            # the domains went with their varstores and TPM state; the volumes stay
            assert not list((host.base / "lib" / "qemu" / "nvram").iterdir())
            assert not list((host.base / "lib" / "swtpm").glob("*/*"))
            assert not host.qemu_pids()
        finally:
            host.remove()
    finally:
        network.remove()
        shutil.rmtree(base, ignore_errors=True)
