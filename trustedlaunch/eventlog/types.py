"""TCG PC Client event types (PFP spec) and TPM2 hash algorithm identifiers (TCG Algorithm Registry)."""

from __future__ import annotations

from dataclasses import dataclass

# Events of the TCG PC Client Platform Firmware Profile, section 10.4.1.
EV_PREBOOT_CERT = 0x00000000
EV_POST_CODE = 0x00000001
EV_UNUSED = 0x00000002
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_ACTION = 0x00000005
EV_EVENT_TAG = 0x00000006
EV_S_CRTM_CONTENTS = 0x00000007
EV_S_CRTM_VERSION = 0x00000008
EV_CPU_MICROCODE = 0x00000009
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
EV_TABLE_OF_DEVICES = 0x0000000B
EV_COMPACT_HASH = 0x0000000C
EV_IPL = 0x0000000D
EV_IPL_PARTITION_DATA = 0x0000000E
EV_NONHOST_CODE = 0x0000000F
EV_NONHOST_CONFIG = 0x00000010
EV_NONHOST_INFO = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
EV_POST_CODE2 = 0x00000013

EV_EFI_EVENT_BASE = 0x80000000
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_GPT_EVENT2 = 0x8000000D
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2
EV_EFI_SPDM_DEVICE_POLICY = 0x800000E3
EV_EFI_SPDM_DEVICE_AUTHORITY = 0x800000E4

_EVENT_TYPE_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith("EV_") and isinstance(value, int)
}


def event_type_name(event_type: int) -> str:
    """The TCG name of an event type, or "EV_UNKNOWN_0x........" for an unassigned value."""
    name = _EVENT_TYPE_NAMES.get(event_type)
    return name if name is not None else f"EV_UNKNOWN_0x{event_type:08x}"


@dataclass(frozen=True)
class HashAlgorithm:
    """A TPM2 hash algorithm: its TPM_ALG_ID, the bank name used throughout the project and digest size."""

    alg_id: int
    bank: str
    digest_size: int
    hashlib_name: str | None  # None when Python's hashlib cannot compute it


TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
TPM_ALG_SM3_256 = 0x0012
TPM_ALG_SHA3_256 = 0x0027
TPM_ALG_SHA3_384 = 0x0028
TPM_ALG_SHA3_512 = 0x0029

HASH_ALGORITHMS: tuple[HashAlgorithm, ...] = (
    HashAlgorithm(TPM_ALG_SHA1, "sha1", 20, "sha1"),
    HashAlgorithm(TPM_ALG_SHA256, "sha256", 32, "sha256"),
    HashAlgorithm(TPM_ALG_SHA384, "sha384", 48, "sha384"),
    HashAlgorithm(TPM_ALG_SHA512, "sha512", 64, "sha512"),
    HashAlgorithm(TPM_ALG_SM3_256, "sm3_256", 32, "sm3"),
    HashAlgorithm(TPM_ALG_SHA3_256, "sha3_256", 32, "sha3_256"),
    HashAlgorithm(TPM_ALG_SHA3_384, "sha3_384", 48, "sha3_384"),
    HashAlgorithm(TPM_ALG_SHA3_512, "sha3_512", 64, "sha3_512"),
)
ALGORITHMS_BY_ID: dict[int, HashAlgorithm] = {alg.alg_id: alg for alg in HASH_ALGORITHMS}
ALGORITHMS_BY_BANK: dict[str, HashAlgorithm] = {alg.bank: alg for alg in HASH_ALGORITHMS}


def bank_name(alg_id: int) -> str:
    """The bank name of a TPM_ALG_ID ("sha256" for 0x000B), or "alg_0x...." when it is not a known hash."""
    alg = ALGORITHMS_BY_ID.get(alg_id)
    return alg.bank if alg is not None else f"alg_0x{alg_id:04x}"


def alg_id(bank: str) -> int:
    """The TPM_ALG_ID of a bank name; raises KeyError for an unknown bank."""
    return ALGORITHMS_BY_BANK[bank].alg_id


def digest_size(bank: str) -> int:
    """The digest size in bytes of a bank name; raises KeyError for an unknown bank."""
    return ALGORITHMS_BY_BANK[bank].digest_size
