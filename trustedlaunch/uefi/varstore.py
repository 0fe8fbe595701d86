"""Secure Boot state of an OVMF (edk2) varstore: PK, KEK, db, dbx, MokList, SecureBoot and SbatLevel."""

from __future__ import annotations

import collections
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virt.firmware.efi import siglist as virt_siglist
from virt.firmware.varstore import autodetect

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.uefi.siglist import SignatureEntry, SignatureListError, parse_signature_lists

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_SECURE_BOOT_ENABLE_DISABLE = uuid.UUID("f0a30bc7-af08-4556-99c4-001009c93a44")
SHIM_LOCK = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")


# virt-firmware decodes untrusted bytes and fails with whatever its code runs into on malformed input
# (struct.error, IndexError, RuntimeError("signature list is empty"), SystemExit, ...): all mean "corrupt".
_VIRT_FIRMWARE_ERRORS: tuple[type[BaseException], ...] = (SystemExit, Exception)


def _signature_lists_are_well_formed(data: bytes) -> bool:
    """Whether our own parser accepts the data as EFI_SIGNATURE_LISTs."""
    try:
        parse_signature_lists(data, "virt-firmware signature database")
    except SignatureListError:
        return False
    return True


def _harden_virt_firmware() -> None:
    """virt-firmware decodes PK, KEK, db, dbx and MokList into signature databases while it reads a
    varstore, and loops forever (appending entries until memory runs out) on a list whose SignatureSize
    is 0 or whose SignatureListSize runs far past the data. We never use its decoded databases (the raw
    variable data goes through our own `parse_signature_lists`, which names the bad field): leave a
    malformed database undecoded there, so the error comes from our parser instead of a hang."""
    original = virt_siglist.EfiSigDB.__init__
    if getattr(original, "trustedlaunch_checked", False):
        return

    def init(self: Any, data: bytes = b"") -> None:
        if _signature_lists_are_well_formed(data):
            original(self, data)
        else:
            collections.UserList.__init__(self)

    init.trustedlaunch_checked = True  # type: ignore[attr-defined]
    virt_siglist.EfiSigDB.__init__ = init


_harden_virt_firmware()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class VarStoreError(TrustedLaunchError):
    """A file that is not a readable UEFI varstore, or a Secure Boot variable in it that does not parse."""


@dataclass(frozen=True)
class VarStore:
    """The Secure Boot relevant content of a varstore file."""

    path: Path
    pk: tuple[SignatureEntry, ...]
    kek: tuple[SignatureEntry, ...]
    db: tuple[SignatureEntry, ...]
    dbx: tuple[SignatureEntry, ...]
    mok_list: tuple[SignatureEntry, ...]  # shim's MokList (machine owner keys), usually absent
    mok_list_x: tuple[SignatureEntry, ...]  # shim's MokListX (machine owner denylist)
    secure_boot_enable: bool | None  # edk2's SecureBootEnable (or a stored SecureBoot) variable
    sbat_level: str | None  # shim's SbatLevel variable, None when absent
    # PK, KEK, db and dbx as stored (the signature lists OVMF measures into PCR7); b"" when absent
    raw_databases: dict[str, bytes] = field(default_factory=dict)

    @property
    def setup_mode(self) -> bool:
        """True when no platform key is enrolled: the firmware then enforces nothing."""
        return not self.pk

    @property
    def secure_boot(self) -> bool:
        """Whether the firmware will enforce signature checks (PK enrolled and not disabled)."""
        return not self.setup_mode and self.secure_boot_enable is not False


def read_varstore(path: Path) -> VarStore:
    """Read an OVMF varstore (raw .fd, qcow2 or virt-firmware JSON) and parse its Secure Boot variables."""
    if not path.is_file():
        problem = "is not a regular file" if path.exists() else "no such file"
        raise VarStoreError(f"varstore {path}: {problem}")
    not_a_varstore = (
        f"varstore {path}: not a UEFI varstore (no edk2 NvData firmware volume, qcow2 image "
        "or virt-firmware JSON varstore found)"
    )
    try:
        store = autodetect.open_varstore(str(path))
    except _VIRT_FIRMWARE_ERRORS as exc:
        raise VarStoreError(f"{not_a_varstore}; reading it failed with {_describe(exc)}") from exc
    if store is None:
        raise VarStoreError(not_a_varstore)
    try:
        variables = {name: (str(var.guid), bytes(var.data)) for name, var in store.get_varlist().items()}
    except _VIRT_FIRMWARE_ERRORS as exc:
        raise VarStoreError(f"varstore {path}: the variable store is corrupt: {_describe(exc)}") from exc

    def data(name: str, vendor: uuid.UUID) -> bytes | None:
        variable = variables.get(name)
        if variable is None or variable[0].lower() != str(vendor):
            return None
        return variable[1]

    def signatures(name: str, vendor: uuid.UUID) -> tuple[SignatureEntry, ...]:
        payload = data(name, vendor)
        return parse_signature_lists(payload, f"varstore {path}, variable {name}") if payload else ()

    enable = data("SecureBootEnable", EFI_SECURE_BOOT_ENABLE_DISABLE)
    if enable is None:
        enable = data("SecureBoot", EFI_GLOBAL_VARIABLE)
    sbat_level = data("SbatLevel", SHIM_LOCK)
    return VarStore(
        path=path,
        pk=signatures("PK", EFI_GLOBAL_VARIABLE),
        kek=signatures("KEK", EFI_GLOBAL_VARIABLE),
        db=signatures("db", EFI_IMAGE_SECURITY_DATABASE),
        dbx=signatures("dbx", EFI_IMAGE_SECURITY_DATABASE),
        mok_list=signatures("MokList", SHIM_LOCK),
        mok_list_x=signatures("MokListX", SHIM_LOCK),
        secure_boot_enable=bool(enable[0]) if enable else None,
        sbat_level=sbat_level.decode("ascii", "replace").rstrip("\0") if sbat_level else None,
        raw_databases={
            name: data(name, vendor) or b""
            for name, vendor in (
                ("PK", EFI_GLOBAL_VARIABLE),
                ("KEK", EFI_GLOBAL_VARIABLE),
                ("db", EFI_IMAGE_SECURITY_DATABASE),
                ("dbx", EFI_IMAGE_SECURITY_DATABASE),
            )
        },
    )
