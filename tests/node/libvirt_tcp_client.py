"""Run inside the client network namespace (tests/node/test_libvirt_driver.py): boot a Secure Boot + vTPM node
on the libvirt host at URI (reached over TCP), attest it, destroy it, print one JSON line with the outcome.

Usage: python libvirt_tcp_client.py URI IMAGE_DIR EK_CA_DIR VTPM_DIR RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.remote import attest_node
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_driver import LibvirtDriver
from trustedlaunch.node.qemu import FIRMWARE
from trustedlaunch.tpm.ekca import load_ek_ca
from trustedlaunch.tpm.vtpm import Vtpm

BOOT_TIMEOUT = 600.0


def main(uri: str, image_dir: str, ek_ca_dir: str, vtpm_dir: str, run_dir: str) -> None:
    image, ek_ca = NodeImage.load(Path(image_dir)), load_ek_ca(Path(ek_ca_dir))
    driver = LibvirtDriver(uri)
    try:
        with driver.create(image, Path(run_dir), secure_boot=True, vtpm=Vtpm(Path(vtpm_dir))) as vm:
            ready = vm.wait_ready(BOOT_TIMEOUT)
            policy = policy_for_image(image.esp_dir, FIRMWARE[True][1])
            attestation = attest_node(vm, policy=policy, ek_ca=[ek_ca.certificate])
            outcome = {
                "hostname": driver.connection.getHostname(),
                "ready": ready,
                "ok": attestation.ok,
                "enrolled": attestation.enrolled,
                "findings": [str(finding) for finding in attestation.result.findings],
            }
    finally:
        driver.close()
    print(json.dumps(outcome))


if __name__ == "__main__":
    main(*sys.argv[1:])
