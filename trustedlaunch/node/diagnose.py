"""Boot failure diagnosis: the console tail of a failed node boot plus the offline Secure Boot decision
for the VM's own varstore and ESP, as one operator message naming the component that stopped the boot; a VM
process that was killed (a signal) or failed itself (QEMU's non-zero exit) is named as such instead."""

from __future__ import annotations

from dataclasses import dataclass

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.driver import NodeMachine
from trustedlaunch.node.qemu import FATAL_CONSOLE_MARKERS, BootFailedError, RootfsFailedError
from trustedlaunch.node.supervisor import vm_end
from trustedlaunch.uefi.authenticode import ReasonCode
from trustedlaunch.uefi.secureboot import ComponentVerdict, decide_boot


@dataclass(frozen=True)
class BootDiagnosis:
    """Why a node did not boot: the refused component (None when the offline check accepts the chain),
    the reason code, what the console showed, and the whole story as one message."""

    component: str | None
    reason: ReasonCode | None
    console: str
    message: str


def _console_evidence(console_tail: str) -> str:
    """The fatal marker the console shows, else its last non-empty line."""
    marker = next((marker for marker in FATAL_CONSOLE_MARKERS if marker in console_tail), None)
    if marker is not None:
        return marker
    lines = [line.strip() for line in console_tail.splitlines() if line.strip()]
    return lines[-1] if lines else "(no console output)"


def _refusal(verdict: ComponentVerdict) -> str:
    verifier = "the firmware" if verdict.name == "shim" else "shim"
    if verdict.reason in (ReasonCode.NOT_SIGNED, ReasonCode.SIGNER_NOT_TRUSTED, ReasonCode.DIGEST_MISMATCH):
        return f"not signed by a key {verifier} trusts"
    if verdict.reason in (ReasonCode.REVOKED_BY_HASH, ReasonCode.REVOKED_BY_CERTIFICATE):
        return f"revoked by {verifier}'s forbidden database"
    if verdict.reason == ReasonCode.SBAT_REVOKED:
        return "revoked by SBAT"
    if verdict.reason == ReasonCode.MISSING:
        return "missing"
    return "not a loadable image"


def diagnose_boot_failure(vm: NodeMachine, failure: BootFailedError) -> BootDiagnosis:
    """Explain a BootFailedError of `vm` (either driver's): how its process ended when it was killed or QEMU
    failed (the direct driver's supervisor record, QEMU's log), else the offline decision on the varstore
    and ESP it booted."""
    console = _console_evidence(failure.console_tail)
    if isinstance(failure, RootfsFailedError):  # the boot chain ran: the root filesystem stopped the node
        return BootDiagnosis("root filesystem", None, console, failure.reason)
    ended = vm_end(vm.run_dir)
    if ended.process_failure:
        return BootDiagnosis(
            None,
            None,
            console,
            f"{ended.describe()} before the node booted: not a firmware or guest failure; console: {console}",
        )
    try:
        decision = decide_boot(vm.varstore_path, vm.esp_path)
    except TrustedLaunchError as exc:
        return BootDiagnosis(
            None, None, console, f"the boot chain cannot be checked offline ({exc}); console: {console}"
        )
    refused = decision.failure
    if refused is None:
        chain = ", ".join(f"{c.name} ({c.path})" for c in decision.components)
        return BootDiagnosis(
            None,
            None,
            console,
            f"the offline Secure Boot check accepts every stage ({chain}): the boot failed after the "
            f"boot chain or in the VM itself; console: {console}",
        )
    message = (
        f"{refused.name} ({refused.path}): {_refusal(refused)} — {refused.detail} "
        f"[{refused.reason}]; console: {console}"
    )
    return BootDiagnosis(refused.name, refused.reason, console, message)
