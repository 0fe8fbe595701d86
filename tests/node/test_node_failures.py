"""A node without vTPM (Secure Boot on or off) reports "no TPM"; a node whose kernel is unsigned fails at
shim with a clear error and a diagnosis naming the kernel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from node_helpers import processes_under, unsigned_copy

from trustedlaunch.node.channel import AgentError
from trustedlaunch.node.diagnose import diagnose_boot_failure
from trustedlaunch.node.image import NodeImage, build_node_image, default_kernel
from trustedlaunch.node.qemu import BootFailedError, NodeVM
from trustedlaunch.uefi.authenticode import ReasonCode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[True, False], ids=["secure-boot", "no-secure-boot"])
def node_without_tpm(
    request: pytest.FixtureRequest, node_image: NodeImage, node_base: Path
) -> Iterator[NodeVM]:
    secure_boot: bool = request.param
    with NodeVM(node_image, node_base / f"vm-notpm-sb{int(secure_boot)}", secure_boot=secure_boot) as vm:
        vm.wait_ready()
        yield vm


def test_agent_without_tpm_answers_no_tpm(node_without_tpm: NodeVM) -> None:
    assert "trustedlaunch-agent ready (TPM absent)" in node_without_tpm.console_log.read_text(
        errors="replace"
    )
    with pytest.raises(AgentError, match="no TPM"):
        node_without_tpm.request_quote(b"\x01\x02")
    with pytest.raises(AgentError, match="no TPM"):
        node_without_tpm.activate(b"\x00" * 10, b"\x00" * 10)


def test_unsigned_kernel_fails_at_shim(node_base: Path) -> None:
    kernel = unsigned_copy(default_kernel(), node_base / "vmlinuz-unsigned")
    image = build_node_image(node_base / "image-unsigned", kernel=kernel)
    vm = NodeVM(image, node_base / "vm-unsigned", secure_boot=True)
    with vm, pytest.raises(BootFailedError) as failure:
        vm.wait_ready(timeout=120)
    assert "bad shim signature" in failure.value.console_tail
    assert "bad shim signature" in str(failure.value)
    assert not vm.running
    assert not processes_under(vm.run_dir)
    diagnosis = diagnose_boot_failure(vm, failure.value)
    assert (diagnosis.component, diagnosis.reason) == ("kernel", ReasonCode.NOT_SIGNED)
    assert diagnosis.message == (
        "kernel (vmlinuz): not signed by a key shim trusts — the image carries no Authenticode signature "
        "[NotSigned]; console: bad shim signature"
    )
