"""Boot summary: Secure Boot state, key databases, boot applications and command lines, from an event log.

Event data is decoded here, on demand, never by the parser. Oddities that do not make the log unusable
(an empty SecureBoot variable, an unparsable signature list, an error separator) become notes.
"""

from __future__ import annotations

import functools
import struct
import uuid
from dataclasses import dataclass

from cryptography import x509

from trustedlaunch.eventlog.devicepath import format_device_path
from trustedlaunch.eventlog.model import (
    BootApplication,
    BootSummary,
    Event,
    EventLog,
    MeasuredVariable,
)
from trustedlaunch.eventlog.types import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_BOOT2,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_EVENT_TAG,
    EV_IPL,
    EV_SEPARATOR,
)
from trustedlaunch.uefi.siglist import (
    DER_CERTIFICATE_ERRORS,
    EFI_CERT_X509,
    SignatureEntry,
    SignatureListError,
    efi_guid,
    parse_signature_lists,
)

_VARIABLE_HEADER = struct.Struct("<16sQQ")  # VariableName GUID, UnicodeNameLength, VariableDataLength
_IMAGE_LOAD_EVENT = struct.Struct("<QQQQ")  # location, length, link-time address, device path length
_TAGGED_EVENT = struct.Struct("<II")  # taggedEventID, taggedEventDataSize
SIGNATURE_DATABASES = frozenset(
    {
        "PK",
        "KEK",
        "db",
        "dbx",
        "dbt",
        "dbr",
        "MokList",
        "MokListX",
        "MokListRT",
        "MokListXRT",
        "MokListTrusted",
    }
)
LOAD_OPTIONS_TAG = 0x8F3B22ED  # Linux EFI stub: LOADED_IMAGE::LoadOptions (the command line)
SEPARATOR_NORMAL = b"\x00\x00\x00\x00"
SEPARATOR_ERROR = b"\xff\xff\xff\xff"
SEPARATOR_WINDOWS = b"WBCL"  # Windows Boot Configuration Log separator, in PCR12..14
GRUB_COMMAND_PREFIXES = ("grub_cmd: ", "grub_cmd ")
# Logs of one firmware measure the same variables (SecureBoot, PK, KEK, db, dbx, the authorities): their
# decoding (signature lists, certificates) is kept for the last few distinct payloads up to this size.
VARIABLE_CACHE_SIZE = 64
MAX_CACHED_VARIABLE_SIZE = 64 * 1024
# RHEL's GRUB measures "grub_kernel_cmdline (hd0,gpt2)/boot/vmlinuz-... root=..." (image path first)
KERNEL_CMDLINE_PCR = 8  # GRUB measures its commands and the kernel command line here
GRUB_CMDLINE_PREFIXES = ("kernel_cmdline: ", "kernel_cmdline ", "grub_kernel_cmdline ")


class VariableDataError(ValueError):
    """A UEFI_VARIABLE_DATA event payload that does not decode (reported as a note, never raised out)."""


@dataclass(frozen=True)
class DecodedVariable:
    """The fields of a UEFI_VARIABLE_DATA event payload."""

    vendor_guid: uuid.UUID
    name: str
    data: bytes


def decode_variable(event: Event) -> DecodedVariable:
    """Decode the UEFI_VARIABLE_DATA of an EV_EFI_VARIABLE_* event; raises VariableDataError."""
    raw = event.data
    if len(raw) < _VARIABLE_HEADER.size:
        raise VariableDataError(f"{len(raw)} bytes, shorter than the {_VARIABLE_HEADER.size}-byte header")
    guid, name_length, data_length = _VARIABLE_HEADER.unpack_from(raw)
    name_end = _VARIABLE_HEADER.size + 2 * name_length
    if name_end + data_length > len(raw):
        raise VariableDataError(
            f"name of {name_length} characters and data of {data_length} bytes "
            f"exceed the {len(raw)}-byte event"
        )
    name = raw[_VARIABLE_HEADER.size : name_end].decode("utf-16-le", errors="replace").rstrip("\x00")
    return DecodedVariable(efi_guid(guid), name, raw[name_end : name_end + data_length])


def _where(event: Event) -> str:
    return f"event #{event.index} (PCR{event.pcr}, byte offset {event.offset})"


def _authority_signatures(variable: DecodedVariable) -> tuple[SignatureEntry, ...]:
    """The certificate of an authority event, as one entry; () when the data holds no certificate.

    Firmware records an EFI_SIGNATURE_DATA (owner GUID + DER); shim records its vendor certificate as bare
    DER, whose owner is then taken to be the variable's vendor GUID.
    """
    data = variable.data
    candidates = ((efi_guid(data[:16]), data[16:]), (variable.vendor_guid, data)) if len(data) > 16 else ()
    for owner, der in candidates:
        try:
            certificate = x509.load_der_x509_certificate(der)
        except DER_CERTIFICATE_ERRORS:
            continue
        return (SignatureEntry(EFI_CERT_X509, owner, der, certificate),)
    return ()


def describe_ipl(data: bytes) -> str:
    """An EV_IPL payload as text: ASCII (GRUB, NUL-terminated) or UTF-16 (systemd / EFI stub)."""
    if len(data) >= 4 and len(data) % 2 == 0 and data[1] == 0 and data[3] == 0:
        return data.decode("utf-16-le", errors="replace").rstrip("\x00")
    return data.decode("utf-8", errors="replace").rstrip("\x00")


def _boot_application(event: Event) -> BootApplication | str:
    """The application of an EV_EFI_BOOT_SERVICES_APPLICATION event, or a note when it does not decode."""
    if len(event.data) < _IMAGE_LOAD_EVENT.size:
        return f"boot application {_where(event)}: {len(event.data)}-byte image load event is truncated"
    _, image_size, _, path_length = _IMAGE_LOAD_EVENT.unpack_from(event.data)
    path = event.data[_IMAGE_LOAD_EVENT.size : _IMAGE_LOAD_EVENT.size + path_length]
    return BootApplication(event, format_device_path(path), image_size)


# A variable event's name, vendor GUID, data and signatures.
VariableParts = tuple[str, uuid.UUID, bytes, tuple[SignatureEntry, ...]]


def _variable_parts(event: Event, notes: list[str]) -> VariableParts | None:
    """Decode a variable event's payload; problems become `notes` (None when it does not decode at all)."""
    try:
        decoded = decode_variable(event)
    except VariableDataError as exc:
        notes.append(f"{event.type_name} {_where(event)} does not decode: {exc}")
        return None
    signatures: tuple[SignatureEntry, ...] = ()
    if event.event_type == EV_EFI_VARIABLE_AUTHORITY:
        signatures = _authority_signatures(decoded)
    elif decoded.name in SIGNATURE_DATABASES and decoded.data:
        try:
            signatures = parse_signature_lists(decoded.data, f"{decoded.name} in {_where(event)}")
        except SignatureListError as exc:
            notes.append(str(exc))
    return decoded.name, decoded.vendor_guid, decoded.data, signatures


@functools.lru_cache(maxsize=VARIABLE_CACHE_SIZE)
def _decoded_variable(event_type: int, data: bytes) -> VariableParts | None:
    """The parts of a variable event's payload that decodes cleanly; None when decoding it notes a problem
    (the uncached path words the note with the event's place)."""
    notes: list[str] = []
    parts = _variable_parts(Event(0, 0, 0, event_type, {}, data), notes)
    return None if notes else parts


def clear_variable_cache() -> None:
    """Forget the decoded variable payloads (to time the decoding of a firmware never seen before)."""
    _decoded_variable.cache_clear()


class _SummaryBuilder:
    """Accumulates the summary while walking the events once."""

    def __init__(self) -> None:
        self.secure_boot: bool | None = None
        self.variables: dict[str, MeasuredVariable] = {}
        self.authorities: list[MeasuredVariable] = []
        self.boot_apps: list[BootApplication] = []
        self.grub_commands: list[str] = []
        self.grub_cmdline: str | None = None
        self.stub_cmdline: str | None = None
        self.grub_cmdline_event: Event | None = None
        self.chainload_cmdline: str | None = None
        self.chainload_cmdline_event: Event | None = None
        self.stub_cmdline_event: Event | None = None
        self.separators_ok = True
        self.notes: list[str] = []

    def variable(self, event: Event) -> MeasuredVariable | None:
        parts = None
        if len(event.data) <= MAX_CACHED_VARIABLE_SIZE:
            parts = _decoded_variable(event.event_type, event.data)
        if parts is None:
            parts = _variable_parts(event, self.notes)
        return None if parts is None else MeasuredVariable(event, *parts)

    def config_variable(self, event: Event) -> None:
        variable = self.variable(event)
        if variable is None or event.pcr != 7:
            return
        self.variables[variable.name] = variable
        if variable.name == "SecureBoot":
            if not variable.data:
                self.secure_boot = None
                self.notes.append(f"SecureBoot variable {_where(event)} is empty: Secure Boot state unknown")
            else:
                self.secure_boot = variable.data[0] == 1

    def ipl(self, event: Event) -> None:
        text = describe_ipl(event.data)
        for prefix in GRUB_COMMAND_PREFIXES:
            if text.startswith(prefix):
                command = text[len(prefix) :]
                self.grub_commands.append(command)
                # GRUB starting an EFI-stub kernel with `chainloader IMAGE ARGS` passes ARGS as its command
                # line and measures no kernel_cmdline event: the command is the measured command line.
                words = command.split(None, 2)
                if event.pcr == KERNEL_CMDLINE_PCR and len(words) == 3 and words[0] == "chainloader":
                    self.chainload_cmdline, self.chainload_cmdline_event = words[2], event
                return
        for prefix in GRUB_CMDLINE_PREFIXES:
            if text.startswith(prefix):
                self.grub_cmdline = text[len(prefix) :]
                self.grub_cmdline_event = event
                return
        if event.pcr == 12 and event.data[1:2] == b"\x00":
            self.stub_cmdline = text.strip()
            self.stub_cmdline_event = event

    def event_tag(self, event: Event) -> None:
        if (
            len(event.data) >= _TAGGED_EVENT.size
            and _TAGGED_EVENT.unpack_from(event.data)[0] == LOAD_OPTIONS_TAG
        ):
            self.notes.append(
                f"the EFI stub measured the kernel command line {_where(event)} "
                "without recording it in the log"
            )

    def separator(self, event: Event) -> None:
        if event.data == SEPARATOR_NORMAL or (event.data == SEPARATOR_WINDOWS and 12 <= event.pcr <= 14):
            return
        if event.data == SEPARATOR_ERROR:
            self.notes.append(f"error separator (0xFFFFFFFF) in PCR{event.pcr}, {_where(event)}")
            return
        self.separators_ok = False
        self.notes.append(f"unexpected separator value {event.data.hex()} {_where(event)}")

    def build(self) -> BootSummary:
        cmdline, cmdline_event = next(
            (
                (text, event)
                for text, event in (
                    (self.grub_cmdline, self.grub_cmdline_event),
                    (self.chainload_cmdline, self.chainload_cmdline_event),
                    (self.stub_cmdline, self.stub_cmdline_event),
                )
                if text is not None
            ),
            (None, None),
        )
        if "SecureBoot" not in self.variables and not any("SecureBoot variable" in n for n in self.notes):
            self.notes.append("the log measures no SecureBoot variable in PCR7: Secure Boot state unknown")
        return BootSummary(
            secure_boot=self.secure_boot,
            variables=self.variables,
            authorities=tuple(self.authorities),
            boot_apps=tuple(self.boot_apps),
            grub_commands=tuple(self.grub_commands),
            kernel_cmdline=cmdline,
            kernel_cmdline_event=cmdline_event,
            separators_ok=self.separators_ok,
            notes=tuple(self.notes),
        )


def summarize(log: EventLog) -> BootSummary:
    """What the log says about the boot: Secure Boot state, key databases, boot apps, command lines."""
    builder = _SummaryBuilder()
    for event in log.events:
        event_type = event.event_type
        if event_type == EV_EFI_VARIABLE_DRIVER_CONFIG:
            builder.config_variable(event)
        elif event_type == EV_EFI_VARIABLE_AUTHORITY:
            authority = builder.variable(event)
            if authority is not None:
                builder.authorities.append(authority)
        elif event_type == EV_EFI_BOOT_SERVICES_APPLICATION:
            app = _boot_application(event)
            if isinstance(app, str):
                builder.notes.append(app)
            else:
                builder.boot_apps.append(app)
        elif event_type == EV_IPL:
            builder.ipl(event)
        elif event_type == EV_EVENT_TAG:
            builder.event_tag(event)
        elif event_type == EV_SEPARATOR:
            builder.separator(event)
        elif event_type in (EV_EFI_VARIABLE_BOOT, EV_EFI_VARIABLE_BOOT2):
            builder.variable(event)  # decoded only to note malformed ones; boot variables are not kept
    return builder.build()
