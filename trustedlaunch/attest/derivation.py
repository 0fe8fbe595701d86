"""Derived policies: the policy that accepts exactly a known-good boot, from its boot summary or from a
node image and the varstore it boots under (predicted without booting it)."""

from __future__ import annotations

import hashlib
import re
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
from trustedlaunch.uefi.grub_config import GrubBoot, GrubConfigError, read_grub_boot
from trustedlaunch.uefi.siglist import SignatureEntry
from trustedlaunch.uefi.varstore import read_varstore

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
    golden values, with PCR 9 (the GRUB configuration, the files GRUB reads: initramfs and kernel, and the
    kernel's command line) when GRUB chainloads the image's EFI-stub kernel. The exact measured kernel
    command line is `kernel_cmdline`, by default the one the image's GRUB configuration gives
    (`image_kernel_cmdline`; none pinned when it cannot be predicted). An image with a root filesystem
    (its GRUB configuration puts a dm-verity root hash on the kernel command line) also gets that root
    hash as the policy's root filesystem rule, `node_image` naming the image in findings.

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


def _grub_boot(image_esp: Path) -> GrubBoot | None:
    try:
        return read_grub_boot(image_esp)
    except GrubConfigError as exc:
        raise PolicyError(str(exc)) from None


def image_kernel_cmdline(image_esp: Path) -> str | None:
    """The kernel command line GRUB measures (PCR 8) when it boots the image (GrubBoot.measured_cmdline),
    None when its GRUB configuration does not determine it; raises PolicyError naming the file when the
    configuration is unreadable, too large or unparseable."""
    boot = _grub_boot(image_esp)
    return None if boot is None else boot.measured_cmdline


def image_root_hash(image_esp: Path) -> str | None:
    """The dm-verity root hash the image's GRUB configuration puts on the kernel command line (ROOT_HASH_ARG
    of its linux/linuxefi/chainloader line), None when it puts none; raises PolicyError naming the file when
    it is unreadable, too large, or names no single well-formed root hash."""
    boot = _grub_boot(image_esp)
    if boot is None:
        return None
    prefix = f"{ROOT_HASH_ARG}="
    hashes = {
        token.removeprefix(prefix)
        for line in boot.kernel_lines
        for token in cmdline_tokens(line)
        if token.startswith(prefix)
    }
    if not hashes:
        return None
    root_hash = hashes.pop()
    if hashes or not _ROOT_HASH.fullmatch(root_hash):
        raise PolicyError(
            f"GRUB configuration {boot.config}: {ROOT_HASH_ARG} must name one root hash of 64 lowercase hex "
            "digits"
        )
    return root_hash
