"""Findings: the one shape every attestation failure takes, naming the check, PCR, event and component.

This module is the contract between quote verification (`attest.quote`), the policy (`attest.evaluation`),
the verifier (`attest.verifier`), the TPM credential checks (`tpm.credential`, `tpm.ekca`) and what reports
failures (CLI, alerts). It sits at the package root, below every layer, so that tpm need not import attest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from trustedlaunch.errors import TrustedLaunchError


class Check(StrEnum):
    """Every attestation check, by stable code (used in alerts, JSON output and metrics)."""

    EVIDENCE_FORMAT = "EvidenceMalformed"  # a structure or the event log did not parse
    QUOTE_SIGNATURE = "QuoteSignatureInvalid"
    QUOTE_TYPE = "QuoteTypeInvalid"  # magic != TPM_GENERATED_VALUE or type != TPM_ST_ATTEST_QUOTE
    NONCE = "NonceMismatch"
    PCR_BANK = "PcrBankNotAllowed"  # no SHA-256 bank, SHA-1 only
    PCR_SELECTION = "PcrSelectionInvalid"  # duplicate or malformed selections
    PCR_DIGEST = "PcrDigestMismatch"  # quote's pcrDigest != digest of the replayed log
    CLOCK = "ClockNotMonotonic"  # resetCount/clock went backwards for this node
    AK_BINDING = "AkNotBoundToEk"
    AK_NOT_ENROLLED = "AkNotEnrolled"  # the AK is not one the platform enrolled for a node of the pool named
    AK_CERTIFICATE = "AkCertificateInvalid"
    EK_CERTIFICATE = "EkCertificateInvalid"
    SECURE_BOOT = "SecureBootStateMismatch"
    PLATFORM_KEY = "PlatformKeyNotAllowed"
    KEY_EXCHANGE_KEY = "KeyExchangeKeyNotAllowed"
    SIGNATURE_DB = "SignatureDatabaseNotAllowed"
    FORBIDDEN_DB = "ForbiddenDatabaseMissingEntries"
    BOOT_APPLICATION = "BootApplicationNotAllowed"
    KERNEL_CMDLINE = "KernelCmdlineNotAllowed"
    ROOT_FILESYSTEM = "RootFilesystemNotAllowed"  # the command line names another dm-verity root hash
    SEPARATOR = "SeparatorInvalid"
    PCR_VALUE = "PcrValueMismatch"  # a PCR differs from the policy's golden value
    EVENT_DATA = "EventDataNotMeasured"  # event data not bound to its quoted digest, or a hidden PCR4 load
    NODE_HEALTH = "NodeUnhealthy"  # not an attestation check: the node failed its liveness checks
    # not an attestation check: the node did not boot because Secure Boot refused a stage of its chain, or
    # dm-verity found its root filesystem altered (the component named from its console and the chain)
    BOOT_INTEGRITY = "BootIntegrityFailure"


@dataclass(frozen=True)
class Finding:
    """One failed check, worded for an operator: what failed, in which PCR/event/component, and why."""

    check: Check
    component: str  # "shim", "grub", "kernel", "firmware", "PK", "KEK", "db", "dbx", "quote", "AK", "EK"...
    message: str
    pcr: int | None = None
    event_index: int | None = None

    def __str__(self) -> str:
        where = [self.component]
        if self.pcr is not None:
            where.append(f"PCR{self.pcr}")
        if self.event_index is not None:
            where.append(f"event #{self.event_index}")
        return f"{self.check.value} ({', '.join(where)}): {self.message}"

    @classmethod
    def from_dict(cls, document: Mapping[str, object]) -> Finding:
        """A finding back from its `to_dict()` form (a stored attestation record or alert); raise ValueError
        naming the field when check, component or message is missing or unreadable (a pcr or eventIndex
        that is not a number reads as absent)."""
        check, component, message = document.get("check"), document.get("component"), document.get("message")
        if not isinstance(check, str) or check not in Check._value2member_map_:
            raise ValueError(f"finding: field 'check': expected one of the checks, got {check!r}")
        for name, value in (("component", component), ("message", message)):
            if not isinstance(value, str):
                raise ValueError(f"finding: field {name!r}: expected a string, got {value!r}")
        pcr, event_index = document.get("pcr"), document.get("eventIndex")
        return cls(
            Check(check),
            str(component),
            str(message),
            pcr if isinstance(pcr, int) and not isinstance(pcr, bool) else None,
            event_index if isinstance(event_index, int) and not isinstance(event_index, bool) else None,
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "check": self.check.value,
            "component": self.component,
            "pcr": self.pcr,
            "eventIndex": self.event_index,
            "message": self.message,
        }


class AttestationError(TrustedLaunchError):
    """Evidence rejected by a check that makes all further checks meaningless (e.g. a forged quote)."""

    def __init__(self, finding: Finding):
        super().__init__(str(finding))
        self.finding = finding
