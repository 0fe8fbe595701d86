"""One line per event saying what it measured, as `tl eventlog show` and the dashboard's evidence page
show it: the boot application, the UEFI variable, the command line or string, the separator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from trustedlaunch.eventlog.model import BootSummary, Event
from trustedlaunch.eventlog.summary import (
    SEPARATOR_NORMAL,
    VariableDataError,
    decode_variable,
    describe_ipl,
)
from trustedlaunch.eventlog.types import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_BOOT2,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_IPL,
    EV_SEPARATOR,
)

DESCRIPTION_LIMIT = 240
_VARIABLE_TYPES = frozenset(
    {EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_VARIABLE_BOOT, EV_EFI_VARIABLE_BOOT2, EV_EFI_VARIABLE_AUTHORITY}
)


def boot_app_labels(summary: BootSummary, components: Sequence[str]) -> dict[int, str]:
    """What `describe_event` says of each boot application of `summary`, by event index: its component
    (`components`, in load order: trustedlaunch.attest.policy.boot_app_components) and device path."""
    return {
        app.event.index: f"{component}: {app.device_path or '(loaded from memory)'}"
        for app, component in zip(summary.boot_apps, components, strict=True)
    }


def _text(data: bytes) -> str:
    text = data.rstrip(b"\x00")
    if text and text.isascii() and all(32 <= byte < 127 or byte in (9, 10, 13) for byte in text):
        return text.decode("ascii")
    return f"{len(data)} bytes"


def _variable_description(event: Event) -> str:
    try:
        variable = decode_variable(event)
    except VariableDataError as exc:
        return f"variable does not decode: {exc}"
    if variable.name == "SecureBoot" and variable.data:
        return f"SecureBoot = {'enabled' if variable.data[0] == 1 else 'disabled'}"
    return f"{variable.name} ({len(variable.data)} bytes)"


def describe_event(event: Event, boot_apps: Mapping[int, str], limit: int = DESCRIPTION_LIMIT) -> str:
    """One line (at most `limit` characters) saying what an event measured: the boot application (its
    label in `boot_apps`, see boot_app_labels), the variable, the string, the separator, else its size."""
    if event.event_type == EV_EFI_BOOT_SERVICES_APPLICATION and event.index in boot_apps:
        text = boot_apps[event.index]
    elif event.event_type in _VARIABLE_TYPES:
        text = _variable_description(event)
    elif event.event_type == EV_IPL:
        text = describe_ipl(event.data)
    elif event.event_type == EV_SEPARATOR:
        state = "normal" if event.data == SEPARATOR_NORMAL else "not the normal value"
        text = f"separator {event.data.hex()} ({state})"
    else:
        text = _text(event.data)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
