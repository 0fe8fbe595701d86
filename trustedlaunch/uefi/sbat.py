"""SBAT (Secure Boot Advanced Targeting): image `.sbat` metadata, SbatLevel revocations and shim's rule.

An image is revoked when one of its `.sbat` components has a generation lower than the SbatLevel's
minimum generation for that component name.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from trustedlaunch.errors import TrustedLaunchError

SbatPolicy = Literal["previous", "latest"]


class SbatError(TrustedLaunchError):
    """Malformed `.sbat` / `.sbatlevel` section or SbatLevel variable."""


@dataclass(frozen=True)
class SbatEntry:
    """One component line of an image's `.sbat` section."""

    component: str
    generation: int
    vendor: str
    package: str
    version: str
    url: str

    def __str__(self) -> str:
        return f"{self.component},{self.generation}"


@dataclass(frozen=True)
class SbatLevel:
    """A revocation level: the minimum generation per component name, dated by its `sbat,1,DATE` line."""

    datestamp: str  # e.g. "2025021800"; "" when the level has no datestamp
    minimum_generations: dict[str, int]

    def __str__(self) -> str:
        lines = [f"{name},{generation}" for name, generation in self.minimum_generations.items()]
        if self.datestamp:
            lines[0] = f"{lines[0]},{self.datestamp}"
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ShimSbatLevels:
    """The two levels a shim carries in its `.sbatlevel` section."""

    previous: SbatLevel
    latest: SbatLevel


@dataclass(frozen=True)
class SbatRevocation:
    """A component of an image that the level revokes."""

    component: str
    generation: int
    minimum_generation: int

    def __str__(self) -> str:
        return f"{self.component} generation {self.generation} < required {self.minimum_generation}"


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """Non-empty CSV rows with their 1-based line numbers; NUL padding ends the data."""
    text = text.split("\0", 1)[0]
    return [(number, line.split(",")) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _generation(value: str, where: str, number: int) -> int:
    digits = value.strip(" \t\r")
    if not (digits.isascii() and digits.isdigit()):  # int() also takes "²", "\x1f1" or "1_0": refuse them
        raise SbatError(f"{where}, line {number}: generation {value!r} is not a decimal number")
    return int(digits)


def parse_sbat_section(data: bytes, where: str) -> tuple[SbatEntry, ...]:
    """Parse an image's `.sbat` CSV (component,generation,vendor,package,version,url per line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SbatError(f"{where}: .sbat is not text (byte offset {exc.start})") from exc
    entries = []
    for number, fields in _rows(text):
        if len(fields) < 6:
            raise SbatError(
                f"{where}, .sbat line {number}: {len(fields)} fields, 6 expected "
                "(component,generation,vendor,package,version,url)"
            )
        entries.append(
            SbatEntry(
                fields[0], _generation(fields[1], f"{where} .sbat", number), *(f.strip() for f in fields[2:6])
            )
        )
    if not entries:
        raise SbatError(f"{where}: the .sbat section is empty")
    return tuple(entries)


def parse_sbat_level(data: str | bytes, where: str) -> SbatLevel:
    """Parse an SbatLevel ("sbat,1,2023012900\\nshim,2\\ngrub,3\\n...")."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    rows = _rows(text)
    if not rows or rows[0][1][0] != "sbat":
        raise SbatError(
            f"{where}: an SbatLevel must start with an 'sbat,1,DATESTAMP' line, got {text[:40]!r}"
        )
    minimum: dict[str, int] = {}
    for number, fields in rows:
        if len(fields) < 2:
            raise SbatError(
                f"{where}, line {number}: 'component,generation' expected, got {','.join(fields)!r}"
            )
        minimum[fields[0]] = _generation(fields[1], where, number)
    header = rows[0][1]
    return SbatLevel(header[2].strip() if len(header) > 2 else "", minimum)


def parse_sbatlevel_section(data: bytes, where: str) -> ShimSbatLevels:
    """Parse shim's `.sbatlevel` section: u32 version, u32 previous and latest offsets (relative to the
    end of the version field), each pointing at a NUL-terminated SbatLevel."""
    if len(data) < 12:
        raise SbatError(f"{where}: .sbatlevel section is {len(data)} bytes, its header alone needs 12")
    version, previous_offset, latest_offset = struct.unpack_from("<III", data)
    if version != 0:
        raise SbatError(f"{where}: .sbatlevel version {version} is not supported (0 expected)")
    levels = []
    for name, offset in (("previous", previous_offset), ("latest", latest_offset)):
        start = 4 + offset
        if start >= len(data):
            raise SbatError(
                f"{where}: .sbatlevel {name} offset {offset} is past the {len(data)}-byte section"
            )
        end = data.find(b"\0", start)
        levels.append(
            parse_sbat_level(data[start : end if end >= 0 else len(data)], f"{where} .sbatlevel {name}")
        )
    return ShimSbatLevels(previous=levels[0], latest=levels[1])


def effective_level(
    variable: SbatLevel | None, shim_levels: ShimSbatLevels, policy: SbatPolicy = "previous"
) -> SbatLevel:
    """The level shim enforces: the SbatLevel variable when it is at least as recent as shim's built-in
    level for the policy (shim keeps it), else the built-in level (shim writes it before checking)."""
    builtin = shim_levels.previous if policy == "previous" else shim_levels.latest
    if variable is not None and variable.datestamp >= builtin.datestamp:
        return variable
    return builtin


def revocations(entries: Sequence[SbatEntry], level: SbatLevel) -> list[SbatRevocation]:
    """The image components whose generation is below the level's minimum for the same component name."""
    return [
        SbatRevocation(entry.component, entry.generation, level.minimum_generations[entry.component])
        for entry in entries
        if entry.generation < level.minimum_generations.get(entry.component, 0)
    ]
