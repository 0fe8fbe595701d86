"""A node image version built from another Debian signed kernel than the installed one (linux-image-6.1.0-50-
amd64 6.1.176-1, fetched by apt, never installed) boots for real: Secure Boot verifies Debian's signature on
that kernel, lockdown loads that package's own signed modules to open the dm-verity root filesystem, and the
node passes attestation against the policy predicted from its image before it booted, and fails against
the installed kernel's version (6.1.0-57) with findings naming the kernel (its PCR 4 step and PCR 9)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from debian_boot_packages import OTHER_KERNEL

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.remote import attest_node
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.node_image_versions import boot_chain
from trustedlaunch.control.node_images import build_release_image
from trustedlaunch.control.node_runtime_release import NodeRuntime
from trustedlaunch.findings import Check
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.qemu import FIRMWARE, NodeVM
from trustedlaunch.tpm.ekca import EkCa
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow
NONCE = bytes.fromhex("0a6e50")


@pytest.fixture(scope="module")
def images(
    kubernetes_release: KubernetesRelease, node_runtime: NodeRuntime, node_base: Path
) -> dict[str, NodeImage]:
    """The release image of the installed boot chain and of the downloaded 6.1.0-50 kernel."""
    return {
        "installed": build_release_image(node_base / "installed-kernel"),
        "other": build_release_image(node_base / "other-kernel", boot_chain=boot_chain(*OTHER_KERNEL)),
    }


@pytest.fixture(scope="module")
def policies(images: dict[str, NodeImage]) -> dict[str, Policy]:
    return {name: policy_for_image(image.esp_dir, FIRMWARE[True][1]) for name, image in images.items()}


@pytest.fixture(scope="module")
def other_kernel_node(images: dict[str, NodeImage], node_base: Path, node_ek_ca: EkCa) -> Iterator[NodeVM]:
    vtpm = Vtpm.create(node_base / "vtpm-other-kernel", ek_ca=node_ek_ca)
    runs = Path(tempfile.mkdtemp(prefix="tl-kver-", dir=node_base))
    node = NodeVM(images["other"], runs / "vm", secure_boot=True, vtpm=vtpm)
    with node:
        node.wait_ready()
        yield node
    assert not node.running and not vtpm.running


def golden(policy: Policy, pcr: int) -> str:
    return next(g.value for g in policy.golden_pcrs if (g.bank, g.pcr) == ("sha256", pcr))


def test_the_two_kernels_predict_other_pcr9_values(
    policies: dict[str, Policy], images: dict[str, NodeImage]
) -> None:
    assert images["other"].release["kernelPackage"] == OTHER_KERNEL[0]
    assert images["installed"].release["kernelPackage"] != OTHER_KERNEL[0]
    assert golden(policies["other"], 9) != golden(policies["installed"], 9)  # kernel and initramfs
    assert golden(policies["other"], 7) == golden(policies["installed"], 7)  # the same signers


def test_the_downloaded_kernel_boots_and_passes_its_own_policy_only(
    other_kernel_node: NodeVM, policies: dict[str, Policy], node_ek_ca: EkCa
) -> None:
    # lockdown loaded the 6.1.0-50 package's signed virtio, dm-verity and squashfs modules
    assert other_kernel_node.rootfs_status is not None and other_kernel_node.rootfs_status.state == "verified"
    quote = other_kernel_node.request_quote(NONCE)
    assert quote.pcr_values["sha256"][9] == bytes.fromhex(golden(policies["other"], 9))
    own = attest_node(other_kernel_node, policy=policies["other"], ek_ca=[node_ek_ca.certificate])
    assert own.ok, [str(finding) for finding in own.result.findings]
    other = attest_node(other_kernel_node, policy=policies["installed"], ek_ca=[node_ek_ca.certificate])
    assert not other.ok
    found = {(finding.check, finding.component, finding.pcr) for finding in other.result.findings}
    assert (Check.BOOT_APPLICATION, "kernel", 4) in found  # the kernel's Authenticode digest
    assert any(check == Check.PCR_VALUE and pcr == 9 for check, _, pcr in found)  # kernel and initramfs
    kernel = next(f for f in other.result.findings if f.check == Check.BOOT_APPLICATION)
    assert "is not in the pool's image policy for kernel" in kernel.message
    assert all(f.component not in ("shim", "grub") for f in other.result.findings)
