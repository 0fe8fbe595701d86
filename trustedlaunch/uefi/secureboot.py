"""Would this ESP boot under this varstore? Firmware -> shim -> GRUB -> kernel, checked as UEFI and shim do.

The chain: EFI/BOOT/BOOTX64.EFI (shim, checked by the firmware against db/dbx), EFI/BOOT/grubx64.efi
(checked by shim against db + MokList + its vendor certificate, minus dbx + MokListX + vendor dbx, plus
SBAT) and the kernel named by EFI/debian/grub.cfg (checked through shim's verifier; SBAT only when the
kernel has a .sbat section, as shim allows for images verified on behalf of GRUB).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trustedlaunch.uefi import siglist
from trustedlaunch.uefi.authenticode import (
    ImageVerdict,
    PeImage,
    PeImageError,
    ReasonCode,
    TrustAnchor,
    load_pe_image,
    verify_image,
)
from trustedlaunch.uefi.sbat import (
    SbatEntry,
    SbatError,
    SbatLevel,
    effective_level,
    parse_sbat_level,
    parse_sbat_section,
    revocations,
)
from trustedlaunch.uefi.shim import ShimTrust, read_shim_trust
from trustedlaunch.uefi.siglist import SignatureEntry, SignatureListError
from trustedlaunch.uefi.varstore import VarStore, read_varstore

SHIM_PATH = "EFI/BOOT/BOOTX64.EFI"
GRUB_PATH = "EFI/BOOT/grubx64.efi"
GRUB_CONFIG_PATH = "EFI/debian/grub.cfg"

_KERNEL_LINE = re.compile(r"^\s*(linux|linuxefi|chainloader)\s+(\S+)", re.MULTILINE)
_GRUB_DEVICE = re.compile(r"^\([^)]*\)")


@dataclass(frozen=True)
class ComponentVerdict:
    """One boot stage: what was found and whether the stage before it accepts it."""

    name: str  # "shim", "grub", "kernel"
    path: str  # relative to the ESP root
    sha256: bytes | None  # Authenticode SHA-256 (what firmware measures in EV_EFI_BOOT_SERVICES_APPLICATION)
    sha1: bytes | None
    signer_subject: str | None
    verified_by: str | None  # e.g. "db: Microsoft Corporation UEFI CA 2011" or "shim vendor cert: ..."
    sbat: tuple[SbatEntry, ...]
    reason: ReasonCode | None  # None: accepted
    detail: str  # operator explanation
    authority_entry: SignatureEntry | None = None  # the entry named by verified_by (measured into PCR7)

    @property
    def accepted(self) -> bool:
        """True when this stage would be loaded."""
        return self.reason is None

    @property
    def message(self) -> str:
        """Operator message naming the component and its path."""
        return f"{self.name} ({self.path}): {self.detail}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.sha256.hex() if self.sha256 else None,
            "sha1": self.sha1.hex() if self.sha1 else None,
            "signer": self.signer_subject,
            "verifiedBy": self.verified_by,
            "sbat": [str(entry) for entry in self.sbat],
            "accepted": self.accepted,
            "reason": self.reason.value if self.reason else None,
            "message": self.message,
        }


@dataclass(frozen=True)
class BootDecision:
    """The verdict for a whole boot chain."""

    secure_boot: bool
    components: tuple[ComponentVerdict, ...]  # in boot order
    sbat_level: SbatLevel | None  # the level shim enforces (None: no SBAT enforcement)
    notes: tuple[str, ...] = field(default=())

    @property
    def failure(self) -> ComponentVerdict | None:
        """The first component that stops the boot, if any."""
        return next((c for c in self.components if not c.accepted), None)

    @property
    def boots(self) -> bool:
        """True when every stage is accepted."""
        return self.failure is None

    @property
    def summary(self) -> str:
        """One line for an operator."""
        failure = self.failure
        if failure is not None:
            return f"does not boot: {failure.message} [{failure.reason}]"
        if not self.secure_boot:
            return "boots: Secure Boot is disabled, nothing is verified"
        return "boots: every stage is signed by a trusted authority and none is revoked"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        failure = self.failure
        return {
            "boots": self.boots,
            "secureBoot": self.secure_boot,
            "summary": self.summary,
            "failedComponent": failure.name if failure else None,
            "reason": failure.reason.value if failure and failure.reason else None,
            "sbatLevel": str(self.sbat_level) if self.sbat_level else None,
            "components": [c.to_dict() for c in self.components],
            "notes": list(self.notes),
        }


def decide_boot(varstore: Path, esp: Path) -> BootDecision:
    """Decide whether the ESP boots under the varstore's Secure Boot configuration, stage by stage."""
    store = read_varstore(varstore)
    if not esp.is_dir():
        raise PeImageError(f"ESP {esp}: not a directory")
    notes: list[str] = []
    if not store.secure_boot:
        why = "no PK is enrolled (setup mode)" if store.setup_mode else "SecureBootEnable is 0"
        notes.append(f"Secure Boot is disabled in {varstore} ({why}): firmware and shim verify nothing")

    shim_image, shim_verdict = _check(
        esp, "shim", SHIM_PATH, store, lambda image: _firmware_check(image, store)
    )
    shim_trust = ShimTrust((), (), None)
    if shim_image is not None and store.secure_boot:
        try:
            shim_trust = read_shim_trust(shim_image)
        except (PeImageError, SbatError, SignatureListError) as exc:
            shim_verdict = _malformed(shim_verdict, f"cannot read what shim trusts: {exc}")
    level = _sbat_level(store, shim_trust, notes)
    anchors, forbidden = _shim_databases(store, shim_trust)

    _, grub_verdict = _check(
        esp, "grub", GRUB_PATH, store, lambda image: _shim_check(image, anchors, forbidden, level, False)
    )
    kernel_path = _kernel_path(esp)
    if isinstance(kernel_path, ComponentVerdict):
        kernel_verdict = kernel_path
    else:
        _, kernel_verdict = _check(
            esp,
            "kernel",
            kernel_path,
            store,
            lambda image: _shim_check(image, anchors, forbidden, level, True),
        )
    return BootDecision(
        secure_boot=store.secure_boot,
        components=(shim_verdict, grub_verdict, kernel_verdict),
        sbat_level=level if store.secure_boot else None,
        notes=tuple(notes),
    )


def _check(
    esp: Path, name: str, relative: str, store: VarStore, verify: Callable[[PeImage], ImageVerdict]
) -> tuple[PeImage | None, ComponentVerdict]:
    """Load one stage and run its verifier (or accept it unverified when Secure Boot is off)."""
    path = _find_case_insensitive(esp, relative)
    if path is None:
        return None, ComponentVerdict(
            name, relative, None, None, None, None, (), ReasonCode.MISSING, f"file not found on the ESP {esp}"
        )
    shown = path.relative_to(esp).as_posix()
    try:
        image = load_pe_image(path)
    except PeImageError as exc:
        return None, ComponentVerdict(name, shown, None, None, None, None, (), ReasonCode.MALFORMED, str(exc))
    signer = image.signatures[0].signer_subject if image.signatures else None
    sbat: tuple[SbatEntry, ...] = ()
    if ".sbat" in image.sections:
        try:
            sbat = parse_sbat_section(image.sections[".sbat"], str(path))
        except SbatError as exc:
            if store.secure_boot:
                return image, ComponentVerdict(
                    name, shown, image.sha256, image.sha1, signer, None, (), ReasonCode.MALFORMED, str(exc)
                )
    if not store.secure_boot:
        verdict = ImageVerdict(None, "loaded without verification (Secure Boot is disabled)", None, signer)
    else:
        verdict = verify(image)
    return image, ComponentVerdict(
        name,
        shown,
        image.sha256,
        image.sha1,
        verdict.signer_subject or signer,
        verdict.authority,
        sbat,
        verdict.reason,
        verdict.detail,
        verdict.authority_entry,
    )


def _firmware_check(image: PeImage, store: VarStore) -> ImageVerdict:
    anchors = [TrustAnchor(f"db: {_label(entry)}", entry) for entry in store.db]
    return verify_image(image, anchors, store.dbx)


def _shim_databases(store: VarStore, trust: ShimTrust) -> tuple[list[TrustAnchor], list[SignatureEntry]]:
    """What shim trusts (db, MokList, vendor cert) and forbids (dbx, MokListX, vendor dbx)."""
    anchors = [TrustAnchor(f"db: {_label(entry)}", entry) for entry in store.db]
    anchors += [TrustAnchor(f"MokList: {_label(entry)}", entry) for entry in store.mok_list]
    anchors += [TrustAnchor(f"shim vendor cert: {_label(entry)}", entry) for entry in trust.vendor_db]
    return anchors, [*store.dbx, *store.mok_list_x, *trust.vendor_dbx]


def _shim_check(
    image: PeImage,
    anchors: Sequence[TrustAnchor],
    forbidden: Sequence[SignatureEntry],
    level: SbatLevel | None,
    verified_for_grub: bool,
) -> ImageVerdict:
    """shim's order: SBAT first, then the Authenticode check against its databases."""
    if level is not None:
        section = image.sections.get(".sbat")
        if section is None and not verified_for_grub:
            return ImageVerdict(
                ReasonCode.SBAT_REVOKED,
                "the image has no .sbat section: shim refuses to load images without SBAT metadata",
            )
        if section is not None:
            revoked = revocations(parse_sbat_section(section, str(image.path)), level)
            if revoked:
                return ImageVerdict(
                    ReasonCode.SBAT_REVOKED,
                    f"revoked by SBAT: {'; '.join(map(str, revoked))} "
                    f"(SbatLevel {level.datestamp or 'undated'})",
                )
    return verify_image(image, anchors, forbidden)


def _sbat_level(store: VarStore, trust: ShimTrust, notes: list[str]) -> SbatLevel | None:
    """The SbatLevel shim enforces: the varstore's when recent enough, else shim's built-in "previous"."""
    variable = None
    if store.sbat_level is not None:
        try:
            variable = parse_sbat_level(store.sbat_level, f"varstore {store.path}, variable SbatLevel")
        except SbatError as exc:
            notes.append(f"{exc}; shim replaces a malformed SbatLevel with its built-in level")
    if trust.sbat_levels is None:
        return variable
    return effective_level(variable, trust.sbat_levels)


def _kernel_path(esp: Path) -> str | ComponentVerdict:
    """The kernel GRUB loads (first linux/linuxefi/chainloader line of EFI/debian/grub.cfg), relative to
    the ESP root, or the kernel verdict explaining why none can be found."""

    def failed(reason: ReasonCode, detail: str) -> ComponentVerdict:
        return ComponentVerdict("kernel", GRUB_CONFIG_PATH, None, None, None, None, (), reason, detail)

    config = find_grub_config(esp)
    if config is None:
        return failed(ReasonCode.MISSING, "GRUB configuration not found, so no kernel can be loaded")
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return failed(ReasonCode.MISSING, f"GRUB configuration cannot be read: {exc.strerror}")
    match = _KERNEL_LINE.search(text)
    if match is None:
        return failed(ReasonCode.MISSING, "GRUB configuration has no linux, linuxefi or chainloader line")
    target = PurePosixPath(_GRUB_DEVICE.sub("", match.group(2)).lstrip("/"))
    if ".." in target.parts or not target.parts:
        line = text.count("\n", 0, match.start()) + 1
        return failed(
            ReasonCode.MALFORMED, f"line {line}: kernel path {match.group(2)!r} is not inside the ESP"
        )
    return target.as_posix()


def find_on_esp(esp: Path, path: str) -> Path | None:
    """The file a GRUB path (`/vmlinuz`, `(hd0,gpt1)/initrd.gz`) names on the ESP, found as FAT finds it;
    None when it does not exist or leaves the ESP."""
    target = PurePosixPath(_GRUB_DEVICE.sub("", path).lstrip("/"))
    if ".." in target.parts or not target.parts:
        return None
    return _find_case_insensitive(esp, target.as_posix())


def find_grub_config(esp: Path) -> Path | None:
    """The ESP's GRUB configuration (EFI/debian/grub.cfg, found as FAT finds it), None when there is none."""
    return _find_case_insensitive(esp, GRUB_CONFIG_PATH)


def _find_case_insensitive(root: Path, relative: str) -> Path | None:
    """Resolve a path on the ESP as FAT does (case-insensitively); None when it does not exist."""
    current = root
    for part in PurePosixPath(relative).parts:
        exact = current / part
        if exact.exists():
            current = exact
            continue
        if not current.is_dir():
            return None
        match = next((child for child in current.iterdir() if child.name.lower() == part.lower()), None)
        if match is None:
            return None
        current = match
    return current if current.is_file() else None


def _malformed(verdict: ComponentVerdict, detail: str) -> ComponentVerdict:
    return ComponentVerdict(
        verdict.name,
        verdict.path,
        verdict.sha256,
        verdict.sha1,
        verdict.signer_subject,
        None,
        verdict.sbat,
        ReasonCode.MALFORMED,
        detail,
    )


def _label(entry: SignatureEntry) -> str:
    if entry.certificate is not None:
        return siglist.common_name(entry.certificate)
    kind = siglist.SIGNATURE_TYPE_NAMES.get(entry.signature_type, str(entry.signature_type))
    return f"{kind} {entry.data.hex()}"
