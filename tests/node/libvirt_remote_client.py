"""Run inside the client network namespace (tests/node/test_libvirt_remote.py), as a control plane on
another machine than its libvirt host: boot a Secure Boot + vTPM node on the host at URI with the driver for
hosts that share none of our files (image volumes, console pumped here, the host's own vTPM), attest it
against the host's EK CA and against the platform CA, adopt it from a second connection, boot a second node
of the same image from a third connection, destroy both, then boot a node of the image with a root
filesystem (its dm-verity disk a volume too) and one of an image whose kernel is unsigned (its boot failure
seen on the pumped console); print one JSON line with what the test checks.

Usage: python libvirt_remote_client.py URI RUN_BASE HOST_CA_DIR PLATFORM_CA_DIR IMAGE_DIR ROOTFS_IMAGE_DIR
    UNSIGNED_IMAGE_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.remote import attest_node
from trustedlaunch.node.diagnose import diagnose_boot_failure
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_driver import LibvirtDriver, LibvirtNodeVM
from trustedlaunch.node.qemu import FIRMWARE, BootFailedError
from trustedlaunch.tpm.ekca import load_ek_ca
from trustedlaunch.tpm.vtpm import Vtpm

BOOT_TIMEOUT = 600.0


def local_paths_named(driver: LibvirtDriver, vm: LibvirtNodeVM, paths: list[Path]) -> list[str]:
    """The paths of this machine that the domain's definition (as its host holds it) names."""
    xml = driver.connection.lookupByUUIDString(vm.handle).XMLDesc(0)
    return [str(path) for path in paths if str(path) in xml]


def main(uri: str, run_base: str, host_ca_dir: str, platform_ca_dir: str, *image_dirs: str) -> None:
    image_dir, rootfs_image_dir, unsigned_image_dir = image_dirs
    image = NodeImage.load(Path(image_dir))
    host_ca, platform_ca = load_ek_ca(Path(host_ca_dir)), load_ek_ca(Path(platform_ca_dir))
    base = Path(run_base)
    policy = policy_for_image(image.esp_dir, FIRMWARE[True][1])
    outcome: dict[str, Any] = {}
    driver = LibvirtDriver(uri, local_files=False)
    try:
        # (the vTPM only says that the node has one: the host's libvirt makes it)
        with driver.create(image, base / "node-1", secure_boot=True, vtpm=Vtpm(base / "no-vtpm")) as vm:
            outcome["ready"] = vm.wait_ready(BOOT_TIMEOUT)
            outcome["uploaded"] = list(driver.volumes.uploaded) if driver.volumes else None
            local = [base, Path(image_dir), FIRMWARE[True][0].parent, Path(host_ca_dir)]
            outcome["local_paths_in_domain"] = local_paths_named(driver, vm, local)
            outcome["firmware"] = vm.volumes and [
                vm.volumes.firmware_code.sha256,
                vm.volumes.varstore_template.sha256,
            ]
            outcome["console"] = vm.console_tail()
            host = attest_node(vm, policy=policy, ek_ca=[host_ca.certificate])
            outcome["host_ca"] = {"ok": host.ok, "findings": [str(f) for f in host.result.findings]}
            platform = attest_node(vm, policy=policy, ek_ca=[platform_ca.certificate])
            outcome["platform_ca"] = {
                "ok": platform.ok,
                "findings": [str(f) for f in platform.result.findings],
            }
            adopter = LibvirtDriver(uri, local_files=False)  # a restarted control plane's own connection
            try:
                adopted = adopter.adopt(vm.handle, base / "node-1")
                outcome["adopted_answers"] = adopted is not None and adopted.agent().channel.ping(
                    "adopted", 30.0
                )
                if adopted is not None:
                    adopted.agent().close()
                outcome["adopted_elsewhere"] = adopter.adopt(vm.handle, base / "node-2") is not None
            finally:
                adopter.close()
        second = LibvirtDriver(uri, local_files=False)  # another control plane: finds the volumes there
        try:
            with second.create(
                image, base / "node-2", secure_boot=True, vtpm=Vtpm(base / "no-vtpm")
            ) as other:
                outcome["second_running"] = other.running
                outcome["second_uploaded"] = list(second.volumes.uploaded) if second.volumes else None
                outcome["second_volumes_same"] = other.volumes is not None and vm.volumes == other.volumes
        finally:
            second.close()
        rootfs_image = NodeImage.load(Path(rootfs_image_dir))
        with driver.create(rootfs_image, base / "node-3", secure_boot=False, vtpm=None) as vm:
            vm.wait_ready(BOOT_TIMEOUT)
            outcome["rootfs"] = vm.rootfs_status and vm.rootfs_status.state
            outcome["rootfs_volume"] = vm.volumes and vm.volumes.rootfs and vm.volumes.rootfs.name
        unsigned = NodeImage.load(Path(unsigned_image_dir))
        try:
            with driver.create(unsigned, base / "node-4", secure_boot=True, vtpm=None) as vm:
                vm.wait_ready(BOOT_TIMEOUT)
            outcome["unsigned_failure"] = None
        except BootFailedError as failure:
            outcome["unsigned_failure"] = str(failure)
            diagnosis = diagnose_boot_failure(vm, failure)  # the reconciler's alert names this component
            outcome["unsigned_diagnosis"] = [diagnosis.component, diagnosis.reason]
    finally:
        driver.close()
    print(json.dumps(outcome))


if __name__ == "__main__":
    main(*sys.argv[1:])
