"""Derived policies: the policy that accepts exactly a known-good boot, from its boot summary or from a
node image and the varstore it boots under (predicted without booting it)."""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path

from trustedlaunch.attest.policy import (
    BOOT_APPLICATION_PCR,
    ROOT_HASH_ARG,
    BootStep,
    CmdlineRules,
    ExpectedEvent,
    GoldenPcr,
    Policy,
    PolicyError,
    RootFilesystemRule,
    VariablePolicy,
    boot_app_components,
    cmdline_tokens,
    entry_id,
    variable_digest,
)
from trustedlaunch.eventlog.model import BootSummary
from trustedlaunch.eventlog.predict import predict_pcrs
from trustedlaunch.eventlog.types import EV_EFI_BOOT_SERVICES_APPLICATION
from trustedlaunch.uefi.secureboot import find_grub_config
from trustedlaunch.uefi.siglist import SignatureEntry
from trustedlaunch.uefi.varstore import read_varstore

MAX_GRUB_CONFIG_BYTES = 64 * 1024
_KERNEL_COMMANDS = ("linux", "linuxefi", "chainloader")
_ROOT_HASH = re.compile(r"[0-9a-f]{64}")


def policy_from_summary(summary: BootSummary) -> Policy:
    """Derive a reference policy that accepts exactly the boot described by a known-good summary."""

    def pin(name: str) -> VariablePolicy | None:
        variable = summary.variables.get(name)
        if variable is None:
            return None
        entries = frozenset(entry_id(entry) for entry in variable.signatures)
        return VariablePolicy(frozenset({variable_digest(variable)}), entries, entries)

    steps = []
    for app, name in zip(summary.boot_apps, boot_app_components(summary.boot_apps), strict=True):
        if "sha256" not in app.event.digests:
            raise PolicyError(
                f"cannot derive a boot-application policy: event #{app.event.index} "
                f"({app.device_path or name}) has no SHA-256 digest (SHA-1-only log)"
            )
        steps.append(BootStep(name, frozenset({app.digest("sha256").hex()})))
    dbx = summary.variables.get("dbx")
    return Policy(
        secure_boot=summary.secure_boot,
        pk=pin("PK"),
        kek=pin("KEK"),
        db=pin("db"),
        dbx_required_entries=frozenset(entry_id(e) for e in dbx.signatures) if dbx else frozenset(),
        boot_applications=tuple(steps),
        kernel_cmdline=CmdlineRules(exact=summary.kernel_cmdline),
        require_valid_separators=True,
    )


def policy_for_image(
    image_esp: Path,
    varstore: Path,
    *,
    banks: tuple[str, ...] = ("sha256",),
    kernel_cmdline: str | None = None,
    node_image: str | None = None,
) -> Policy:
    """The policy of a node image booted on OVMF with `varstore`, derived without booting it: Secure Boot
    as the varstore sets it, PK/KEK/db pinned to the varstore's content, its dbx entries required, the
    image's Authenticode digests as the boot chain and the predicted PCR4/PCR7 values (per bank) as
    golden values. The exact measured kernel command line is `kernel_cmdline`, by default the one the
    image's GRUB configuration gives its EFI-stub kernel (`image_kernel_cmdline`; none pinned when it
    cannot be predicted). An image with a root filesystem (its GRUB configuration puts a dm-verity root
    hash on the kernel command line) also gets that root hash as the policy's root filesystem rule,
    `node_image` naming the image in findings.

    Raises PredictionError (the image does not boot under this varstore) or VarStoreError/PeImageError.
    """
    if "sha256" not in banks:
        raise PolicyError(f"policy_for_image needs the sha256 bank (asked for: {', '.join(banks)})")
    store = read_varstore(varstore)
    prediction = predict_pcrs(image_esp, varstore, banks)
    root_hash = image_root_hash(image_esp)
    if kernel_cmdline is None:
        kernel_cmdline = image_kernel_cmdline(image_esp)

    def pin(name: str, entries: tuple[SignatureEntry, ...]) -> VariablePolicy:
        ids = frozenset(entry_id(entry) for entry in entries)
        digest = hashlib.sha256(store.raw_databases.get(name, b"")).hexdigest()
        return VariablePolicy(frozenset({digest}), ids, ids)

    steps = tuple(
        BootStep(event.component, frozenset({event.digests["sha256"].hex()}))
        for event in prediction.events_of(BOOT_APPLICATION_PCR)
        if event.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
    )
    golden = tuple(
        GoldenPcr(
            bank,
            pcr,
            value.hex(),
            tuple(
                ExpectedEvent(event.type_name, event.component, event.description, event.digests[bank].hex())
                for event in prediction.events_of(pcr)
            ),
        )
        for bank, values in prediction.values.items()
        for pcr, value in values.items()
    )
    return Policy(
        secure_boot=store.secure_boot,
        pk=pin("PK", store.pk),
        kek=pin("KEK", store.kek),
        db=pin("db", store.db),
        dbx_required_entries=frozenset(entry_id(entry) for entry in store.dbx),
        boot_applications=steps,
        kernel_cmdline=CmdlineRules(exact=kernel_cmdline),
        require_valid_separators=True,
        golden_pcrs=golden,
        root_filesystem=None if root_hash is None else RootFilesystemRule(root_hash, node_image),
    )


def _kernel_lines(image_esp: Path) -> tuple[Path, list[str]] | None:
    """The image's GRUB configuration and its lines that start a kernel (linux/linuxefi/chainloader), None
    without one; raises PolicyError naming the file when it is unreadable or too large."""
    config = find_grub_config(image_esp)
    if config is None:
        return None
    try:
        with config.open("rb") as stream:
            data = stream.read(MAX_GRUB_CONFIG_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"GRUB configuration {config} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_GRUB_CONFIG_BYTES:
        raise PolicyError(f"GRUB configuration {config} is larger than {MAX_GRUB_CONFIG_BYTES} bytes")
    lines = data.decode("utf-8", errors="replace").splitlines()
    return config, [line for line in lines if line.split()[:1] and line.split()[0] in _KERNEL_COMMANDS]


def image_kernel_cmdline(image_esp: Path) -> str | None:
    """The kernel command line GRUB measures (PCR 8) when it boots the image: the arguments of its one
    `chainloader IMAGE ARGS` line (an EFI-stub kernel: our node images) as GRUB's shell-like parser reads
    them (quotes and backslashes removed), joined by single spaces. None when the configuration has no such
    single line, or one GRUB would expand ($variables): such a command line cannot be predicted."""
    found = _kernel_lines(image_esp)
    if found is None:
        return None
    config, lines = found
    if len(lines) != 1 or "$" in lines[0]:
        return None
    try:
        words = shlex.split(lines[0], comments=True)
    except ValueError as exc:
        raise PolicyError(f"GRUB configuration {config}: its kernel line cannot be parsed: {exc}") from None
    if len(words) < 3 or words[0] != "chainloader":
        return None
    return " ".join(words[2:])


def image_root_hash(image_esp: Path) -> str | None:
    """The dm-verity root hash the image's GRUB configuration puts on the kernel command line (ROOT_HASH_ARG
    of its linux/linuxefi/chainloader line), None when it puts none; raises PolicyError naming the file when
    it is unreadable, too large, or names no single well-formed root hash."""
    found = _kernel_lines(image_esp)
    if found is None:
        return None
    config, lines = found
    prefix = f"{ROOT_HASH_ARG}="
    hashes = {
        token.removeprefix(prefix)
        for line in lines
        for token in cmdline_tokens(line)
        if token.startswith(prefix)
    }
    if not hashes:
        return None
    root_hash = hashes.pop()
    if hashes or not _ROOT_HASH.fullmatch(root_hash):
        raise PolicyError(
            f"GRUB configuration {config}: {ROOT_HASH_ARG} must name one root hash of 64 lowercase hex digits"
        )
    return root_hash
