"""What a GRUB configuration boots, as GRUB's shell-like parser reads it: the kernel it starts (`linux`,
`linuxefi` or `chainloader`), that kernel's arguments, and the files GRUB reads on the way.

GRUB measures the configuration file and every file it opens (`loopback`, the kernel, initrds) into PCR 9
(their contents' digests) and each command it runs into PCR 8 ("grub_cmd: ...", "kernel_cmdline: ..."):
knowing the boot the configuration asks for predicts both. Only a configuration with exactly one kernel line,
at most one initrd line and no `$` expansion can be predicted (`GrubBoot.predictable`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.uefi.secureboot import find_grub_config

MAX_GRUB_CONFIG_BYTES = 64 * 1024
KERNEL_COMMANDS = ("linux", "linuxefi", "chainloader")
INITRD_COMMANDS = ("initrd", "initrdefi")
LOOPBACK_COMMAND = "loopback"


class GrubConfigError(TrustedLaunchError):
    """A GRUB configuration that cannot be read or parsed; the message names the file."""


@dataclass(frozen=True)
class GrubBoot:
    """The boot a GRUB configuration asks for."""

    config: Path
    data: bytes  # the configuration's bytes, as GRUB reads (and measures) them
    kernel_lines: tuple[str, ...]  # its lines starting a kernel, as written
    command: str | None = None  # linux, linuxefi or chainloader (None: not predictable)
    kernel: str | None = None  # the kernel's path as written (e.g. /vmlinuz)
    arguments: tuple[str, ...] = ()  # the kernel's arguments as GRUB's parser reads them
    initrds: tuple[str, ...] = ()  # the initrd paths, in the order GRUB loads them
    reads: tuple[tuple[str, str], ...] = ()  # (command, path) of every file GRUB opens, in order

    @property
    def predictable(self) -> bool:
        """Whether the measured command line and files follow from the configuration alone."""
        return self.command is not None

    @property
    def measured_cmdline(self) -> str | None:
        """The kernel command line GRUB measures (PCR 8): `linux` measures "PATH ARGS" as its
        `kernel_cmdline`, `chainloader` measures its command, whose ARGS an EFI-stub kernel takes as its
        command line. None when not predictable or `chainloader` has no arguments."""
        if self.command is None or self.kernel is None:
            return None
        if self.command == "chainloader":
            return " ".join(self.arguments) if self.arguments else None
        return " ".join((self.kernel, *self.arguments))


def read_grub_boot(esp: Path) -> GrubBoot | None:
    """The boot the ESP's GRUB configuration asks for, None without a configuration. Raises GrubConfigError
    naming the file when it is unreadable, larger than MAX_GRUB_CONFIG_BYTES or not parseable as GRUB
    would read it."""
    config = find_grub_config(esp)
    if config is None:
        return None
    try:
        with config.open("rb") as stream:
            data = stream.read(MAX_GRUB_CONFIG_BYTES + 1)
    except OSError as exc:
        raise GrubConfigError(f"GRUB configuration {config} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_GRUB_CONFIG_BYTES:
        raise GrubConfigError(f"GRUB configuration {config} is larger than {MAX_GRUB_CONFIG_BYTES} bytes")
    lines = data.decode("utf-8", errors="replace").splitlines()
    commands = [line.split()[0] for line in lines if line.split()[:1]]
    kernel_lines = tuple(line for line in lines if line.split()[:1] and line.split()[0] in KERNEL_COMMANDS)
    boot = GrubBoot(config, data, kernel_lines)
    if (
        len(kernel_lines) != 1
        or sum(command in INITRD_COMMANDS for command in commands) > 1
        or any("$" in line for line in lines)
    ):
        return boot
    kernel_words: list[str] = []
    initrds: list[str] = []
    reads: list[tuple[str, str]] = []
    try:
        for line in lines:
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[0] in KERNEL_COMMANDS and len(words) >= 2:
                kernel_words = words
                reads.append((words[0], words[1]))
            elif words[0] in INITRD_COMMANDS:
                initrds = words[1:]
                reads.extend((words[0], path) for path in initrds)
            elif words[0] == LOOPBACK_COMMAND and len(words) == 3 and not words[1].startswith("-"):
                reads.append((LOOPBACK_COMMAND, words[2]))  # `loopback NAME PATH` opens PATH
    except ValueError as exc:
        raise GrubConfigError(f"GRUB configuration {config}: a line cannot be parsed: {exc}") from None
    if not kernel_words:
        return boot
    return GrubBoot(
        config,
        data,
        kernel_lines,
        kernel_words[0],
        kernel_words[1],
        tuple(kernel_words[2:]),
        tuple(initrds),
        tuple(reads),
    )
