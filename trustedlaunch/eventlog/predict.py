"""Golden PCR values without a golden boot: the PCR4 and PCR7 events OVMF, shim and GRUB measure for an ESP,
and PCR9 when its GRUB configuration chainloads an EFI-stub kernel.

The prediction replays what the real chain does (checked against real boots of our node image):

PCR7, Secure Boot on: SecureBoot, PK, KEK, db, dbx (EV_EFI_VARIABLE_DRIVER_CONFIG, measured even when
empty), EV_SEPARATOR, then EV_EFI_VARIABLE_AUTHORITY events: the db entry that verified shim (firmware),
shim's SbatLevel, and each distinct entry shim used for GRUB and the kernel (db, or MokListRT for MokList
and vendor certificates). Secure Boot off: the same variables with SecureBoot 0, the separator and shim's
SbatLevel, which shim resets to its original level when Secure Boot is off.

PCR4: EV_EFI_ACTION "Calling EFI Application from Boot Option", EV_SEPARATOR, then the Authenticode digests
of shim, GRUB and the kernel. With Secure Boot on the kernel appears twice: once measured by shim's verifier
(GRUB asks shim to verify it), once by the firmware's LoadImage when GRUB starts it.

PCR9, when GRUB chainloads an EFI-stub kernel: EV_IPL events with the digests of the files GRUB opens, in
order (its configuration EFI/debian/grub.cfg, files a `loopback` line opens, the kernel), then the kernel
stub's EV_EVENT_TAG of its LoadOptions (the command line). The stub loads the initrd named by `initrd=` and
measures nothing of it: our node images have GRUB open it first (`loopback`), so it is measured.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.model import EventLog
from trustedlaunch.eventlog.types import (
    EV_EFI_ACTION,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_EVENT_TAG,
    EV_IPL,
    EV_NO_ACTION,
    EV_SEPARATOR,
    event_type_name,
)
from trustedlaunch.uefi.grub_config import GrubConfigError, read_grub_boot
from trustedlaunch.uefi.sbat import SbatLevel
from trustedlaunch.uefi.secureboot import ComponentVerdict, decide_boot, find_on_esp
from trustedlaunch.uefi.varstore import (
    EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE,
    SHIM_LOCK,
    read_varstore,
)

GRUB_FILES_PCR = 9
CALLING_BOOT_OPTION = b"Calling EFI Application from Boot Option"
SEPARATOR = b"\x00\x00\x00\x00"
# shim writes (and measures) this SbatLevel when Secure Boot is off (SBAT_VAR_ORIGINAL in shim's sbat_var.S)
SBAT_LEVEL_ORIGINAL = "sbat,1,2021030218\n"
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}


class PredictionError(TrustedLaunchError):
    """The PCR values of this ESP and varstore cannot be predicted (e.g. the chain does not boot)."""


@dataclass(frozen=True)
class PredictedEvent:
    """One event the boot chain will measure."""

    pcr: int
    event_type: int
    component: str  # "firmware", "PK", "KEK", "db", "dbx", "shim", "grub", "kernel"
    description: str  # what was measured, for operators
    digests: dict[str, bytes]  # bank -> digest

    @property
    def type_name(self) -> str:
        """The TCG name of the event type."""
        return event_type_name(self.event_type)


@dataclass(frozen=True)
class PcrPrediction:
    """The predicted events (per PCR, in measurement order) and the PCR values they extend to."""

    events: tuple[PredictedEvent, ...]
    values: dict[str, dict[int, bytes]]  # bank -> PCR -> value

    def events_of(self, pcr: int) -> list[PredictedEvent]:
        """The predicted events of one PCR, in order."""
        return [event for event in self.events if event.pcr == pcr]


def uefi_variable_data(vendor: uuid.UUID, name: str, data: bytes) -> bytes:
    """The UEFI_VARIABLE_DATA structure firmware and shim measure for a variable."""
    encoded_name = name.encode("utf-16-le")
    return vendor.bytes_le + struct.pack("<QQ", len(name), len(data)) + encoded_name + data


def _event(
    pcr: int, event_type: int, component: str, description: str, data: bytes, banks: tuple[str, ...]
) -> PredictedEvent:
    return PredictedEvent(
        pcr, event_type, component, description, {bank: _HASHES[bank](data).digest() for bank in banks}
    )


def _image_event(component: ComponentVerdict, description: str, banks: tuple[str, ...]) -> PredictedEvent:
    digests = {"sha1": component.sha1, "sha256": component.sha256}
    return PredictedEvent(
        4,
        EV_EFI_BOOT_SERVICES_APPLICATION,
        component.name,
        description,
        {bank: digest for bank in banks if (digest := digests[bank]) is not None},
    )


def _authority(component: ComponentVerdict, *, by_firmware: bool) -> tuple[str, uuid.UUID, bytes]:
    """(variable name, vendor GUID, EFI_SIGNATURE_DATA) of the entry that verified a component."""
    entry = component.authority_entry
    if entry is None:
        raise PredictionError(
            f"{component.message}: no certificate or hash entry verified it, so its PCR7 authority "
            "event cannot be predicted"
        )
    label = component.verified_by or ""
    if label.startswith("db:"):
        name, vendor = "db", EFI_IMAGE_SECURITY_DATABASE
    elif by_firmware:
        raise PredictionError(f"{component.message}: firmware verified it with {label!r}, not with db")
    else:
        name, vendor = "MokListRT", SHIM_LOCK  # shim folds MokList and its vendor cert into MokListRT
    return name, vendor, entry.owner.bytes_le + entry.data


def predict_pcrs(esp: Path, varstore: Path, banks: tuple[str, ...] = ("sha256",)) -> PcrPrediction:
    """Predict the PCR4 and PCR7 events and values of booting `esp` on OVMF with `varstore`, and PCR9's
    when its GRUB configuration chainloads an EFI-stub kernel.

    Raises PredictionError when the chain would not boot (nothing to predict) or a bank is unknown.
    """
    unknown = [bank for bank in banks if bank not in _HASHES]
    if unknown:
        raise PredictionError(f"cannot predict PCR bank(s) {', '.join(unknown)} (known: sha1, sha256)")
    decision = decide_boot(varstore, esp)
    if decision.failure is not None:
        raise PredictionError(f"nothing to predict: the image {decision.summary}")
    store = read_varstore(varstore)
    shim, grub, kernel = decision.components
    secure_boot = decision.secure_boot

    pcr7 = [
        _event(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            "firmware",
            f"SecureBoot variable = {int(secure_boot)}",
            uefi_variable_data(EFI_GLOBAL_VARIABLE, "SecureBoot", bytes((int(secure_boot),))),
            banks,
        )
    ]
    for name, vendor in (
        ("PK", EFI_GLOBAL_VARIABLE),
        ("KEK", EFI_GLOBAL_VARIABLE),
        ("db", EFI_IMAGE_SECURITY_DATABASE),
        ("dbx", EFI_IMAGE_SECURITY_DATABASE),
    ):
        data = store.raw_databases.get(name, b"")
        description = f"{name} variable ({len(data)} bytes)" if data else f"{name} variable (empty)"
        pcr7.append(
            _event(
                7,
                EV_EFI_VARIABLE_DRIVER_CONFIG,
                name,
                description,
                uefi_variable_data(vendor, name, data),
                banks,
            )
        )
    pcr7.append(_event(7, EV_SEPARATOR, "firmware", "separator", SEPARATOR, banks))
    if secure_boot:
        name, vendor, data = _authority(shim, by_firmware=True)
        pcr7.append(
            _event(
                7,
                EV_EFI_VARIABLE_AUTHORITY,
                "shim",
                f"authority that verified shim: {shim.verified_by}",
                uefi_variable_data(vendor, name, data),
                banks,
            )
        )
    sbat_level = _measured_sbat_level(decision.sbat_level, store.sbat_level, secure_boot)
    pcr7.append(
        _event(
            7,
            EV_EFI_VARIABLE_AUTHORITY,
            "shim",
            f"SbatLevel {sbat_level.splitlines()[0]}",
            uefi_variable_data(SHIM_LOCK, "SbatLevel", sbat_level.encode()),
            banks,
        )
    )
    if secure_boot:
        measured: set[bytes] = set()
        for component in (grub, kernel):
            name, vendor, data = _authority(component, by_firmware=False)
            variable = uefi_variable_data(vendor, name, data)
            if variable in measured:
                continue
            measured.add(variable)
            description = f"authority that verified {component.name}: {component.verified_by}"
            pcr7.append(_event(7, EV_EFI_VARIABLE_AUTHORITY, component.name, description, variable, banks))

    pcr4 = [
        _event(4, EV_EFI_ACTION, "firmware", CALLING_BOOT_OPTION.decode(), CALLING_BOOT_OPTION, banks),
        _event(4, EV_SEPARATOR, "firmware", "separator", SEPARATOR, banks),
        _image_event(shim, f"shim ({shim.path})", banks),
        _image_event(grub, f"grub ({grub.path})", banks),
    ]
    if secure_boot:
        pcr4.append(_image_event(kernel, f"kernel ({kernel.path}) verified by shim for GRUB", banks))
    pcr4.append(_image_event(kernel, f"kernel ({kernel.path}) started by GRUB", banks))

    events = (*pcr4, *pcr7, *_grub_file_events(esp, banks))
    values: dict[str, dict[int, bytes]] = {}
    for bank in banks:
        values[bank] = {}
        for pcr in sorted({event.pcr for event in events}):
            value = bytes(_HASHES[bank]().digest_size)
            for event in events:
                if event.pcr == pcr:
                    value = _HASHES[bank](value + event.digests[bank]).digest()
            values[bank][pcr] = value
    return PcrPrediction(events, values)


def _grub_file_events(esp: Path, banks: tuple[str, ...]) -> list[PredictedEvent]:
    """The PCR9 events of a GRUB configuration that chainloads an EFI-stub kernel: the configuration, every
    file GRUB opens in order (`loopback` reads, the kernel), then the command line the kernel's stub
    measures (its LoadOptions, UTF-16 with the terminating NUL); none for any other configuration."""
    try:
        boot = read_grub_boot(esp)
    except GrubConfigError as exc:
        raise PredictionError(str(exc)) from None
    if boot is None or boot.command != "chainloader" or boot.initrds:
        return []
    events = [
        PredictedEvent(
            GRUB_FILES_PCR,
            EV_IPL,
            "grub",
            f"GRUB read its configuration {boot.config.relative_to(esp)}",
            {bank: _HASHES[bank](boot.data).digest() for bank in banks},
        )
    ]
    initramfs = {  # what the kernel's stub loads (`initrd=\\initrd.gz`): GRUB's read of it is the initramfs
        argument.split("=", 1)[1].replace("\\", "/").lstrip("/").lower()
        for argument in boot.arguments
        if argument.startswith("initrd=")
    }
    for command, path in boot.reads:
        found = find_on_esp(esp, path)
        if found is None or not found.is_file():
            raise PredictionError(f"GRUB configuration {boot.config}: {path} is not on the ESP")
        digests = {}
        for bank in banks:
            with found.open("rb") as stream:
                digests[bank] = hashlib.file_digest(stream, _HASHES[bank]).digest()
        component = (
            "kernel"
            if command == boot.command
            else "initramfs"
            if path.lstrip("/").lower() in initramfs
            else "grub"
        )
        events.append(PredictedEvent(GRUB_FILES_PCR, EV_IPL, component, f"GRUB read {path}", digests))
    if boot.arguments:
        options = " ".join(boot.arguments).encode("utf-16-le") + b"\x00\x00"
        described = "the kernel's command line (LoadOptions)"
        events.append(_event(GRUB_FILES_PCR, EV_EVENT_TAG, "kernel", described, options, banks))
    return events


def _measured_sbat_level(enforced: SbatLevel | None, stored: str | None, secure_boot: bool) -> str:
    """The SbatLevel variable content shim measures: the original level with Secure Boot off, else the
    stored variable when shim keeps it, else the built-in level shim writes."""
    if not secure_boot or enforced is None:
        return SBAT_LEVEL_ORIGINAL
    if stored is not None and stored.strip() and str(enforced).strip() == stored.strip():
        return stored
    return str(enforced)


@dataclass(frozen=True)
class EventDifference:
    """The first event of a PCR where a log departs from the expected sequence."""

    position: int  # index among the PCR's measured events
    expected: str | None  # "EV_... component: description", None when the log has extra events
    log_event_index: int | None  # index of the event in the log, None when the log ended early
    log_digest: bytes | None


def first_difference(
    log: EventLog, pcr: int, bank: str, expected: list[tuple[str, bytes]]
) -> EventDifference | None:
    """Compare the events a log measured into `pcr` (bank `bank`) with `expected` ((label, digest) in order);
    return the first difference, None when they are identical."""
    measured = [
        event
        for event in log.events
        if event.pcr == pcr and event.event_type != EV_NO_ACTION and bank in event.digests
    ]
    for position in range(max(len(measured), len(expected))):
        label, digest = expected[position] if position < len(expected) else (None, None)
        event = measured[position] if position < len(measured) else None
        if event is not None and event.digests[bank] == digest:
            continue
        return EventDifference(
            position,
            label,
            event.index if event is not None else None,
            event.digests[bank] if event is not None else None,
        )
    return None
