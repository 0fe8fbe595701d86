"""Data model of a parsed TCG PC Client event log and of the boot summary extracted from it.

This module is the contract between the parser (`eventlog.parser`), the summary extractor
(`eventlog.summary`) and their users (attestation policy, CLI). It holds data only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.uefi.siglist import SignatureEntry

LogFormat = Literal["sha1", "crypto-agile"]


class EventLogError(TrustedLaunchError):
    """A malformed or inconsistent event log; the message names the byte offset and event index."""

    def __init__(self, message: str, *, offset: int | None = None, event_index: int | None = None):
        where = []
        if event_index is not None:
            where.append(f"event #{event_index}")
        if offset is not None:
            where.append(f"byte offset {offset} (0x{offset:x})")
        super().__init__(f"{message} [at {', '.join(where)}]" if where else message)
        self.offset = offset
        self.event_index = event_index


@dataclass(frozen=True)
class Event:
    """One measured (or informational) event of the log."""

    index: int  # position in the log, 0-based, the SpecID header event included
    offset: int  # byte offset of the event header in the log file
    pcr: int
    event_type: int
    digests: dict[str, bytes]  # bank name ("sha1", "sha256", "sha384", "sha512", "sm3_256") -> digest
    data: bytes

    @property
    def type_name(self) -> str:
        """The TCG name of the event type, e.g. EV_EFI_VARIABLE_DRIVER_CONFIG."""
        from trustedlaunch.eventlog.types import event_type_name

        return event_type_name(self.event_type)


@dataclass(frozen=True)
class EventLog:
    """A whole parsed log: its format, banks, events and the locality of TPM2_Startup."""

    format: LogFormat
    banks: tuple[str, ...]  # banks present in the log, in SpecID order ("sha1" only for the legacy format)
    events: tuple[Event, ...]
    startup_locality: int = 0  # from the EV_NO_ACTION "StartupLocality" event; PCR0 starts at this value


@dataclass(frozen=True)
class MeasuredVariable:
    """A UEFI variable measured into a PCR (EV_EFI_VARIABLE_DRIVER_CONFIG / _BOOT / _AUTHORITY)."""

    event: Event
    name: str  # e.g. "SecureBoot", "PK", "KEK", "db", "dbx", "SbatLevel", "Boot0001", "MokListTrusted"
    vendor_guid: uuid.UUID
    data: bytes
    signatures: tuple[SignatureEntry, ...] = ()  # parsed when the data is a signature list


@dataclass(frozen=True)
class BootApplication:
    """An EFI application loaded by the firmware (EV_EFI_BOOT_SERVICES_APPLICATION)."""

    event: Event
    device_path: str  # human-readable device path, e.g. "...\\EFI\\BOOT\\BOOTX64.EFI"
    image_size: int

    def digest(self, bank: str = "sha256") -> bytes:
        """The Authenticode digest of the image in the given bank."""
        return self.event.digests[bank]


@dataclass(frozen=True)
class BootSummary:
    """What a verifier needs to know about a boot, extracted from its event log."""

    secure_boot: bool | None  # None when the log has no (or an empty) SecureBoot variable
    variables: dict[str, MeasuredVariable]  # PCR7 config variables by name: SecureBoot, PK, KEK, db, dbx...
    authorities: tuple[MeasuredVariable, ...]  # EV_EFI_VARIABLE_AUTHORITY: what verified each boot app
    boot_apps: tuple[BootApplication, ...]  # in load order
    grub_commands: tuple[str, ...]  # "grub_cmd: ..." EV_IPL strings, prefix stripped
    kernel_cmdline: str | None  # "kernel_cmdline: ..." or "chainloader IMAGE ARGS" (GRUB), or PCR12 (stub)
    separators_ok: bool = True  # all EV_SEPARATOR events carry the normal (0x00000000) value
    notes: tuple[str, ...] = field(default=())  # non-fatal oddities worth showing an operator
    kernel_cmdline_event: Event | None = None  # the event kernel_cmdline was read from (for findings)
