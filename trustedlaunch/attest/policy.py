"""Attestation policy: what a node pool accepts as a good boot, as a model and as a JSON document.

The policy's rules are evaluated in `attest.evaluation` (every policy check of the project lives there),
against a boot the verifier vouches for; `attest.derivation` derives policies from a known-good boot log
or from a node image. A policy is a JSON document (schema version 1)::

    {
      "version": 1,
      "secureBoot": true,                       # true / false / null (= either)
      "pk":  {"variableDigests": [hex], "allowedEntries": [hex], "requiredEntries": [hex]},  # or null
      "kek": {...same shape...},                # or null (= any)
      "db":  {...same shape...},                # or null (= any)
      "dbx": {"requiredEntries": [hex]},        # revocations that MUST be in the measured dbx
      "bootApplications": [                     # or null (= any); ordered, one step per loaded app
        {"component": "shim", "digests": [hex]},
        {"component": "grub", "digests": [hex]},
        {"component": "kernel", "digests": [hex]}
      ],
      "kernelCmdline": {"exact": "..." | null, "requiredTokens": ["ro"], "forbiddenTokens": ["init="]},
      "requireValidSeparators": true,
      "pcrs": {"sha256": {"4": hex, "7": hex}},  # or null: golden PCR values, per bank and PCR
      "pcrEvents": {"sha256": {"4": [             # optional: the expected events of a golden PCR, in
        {"type": "EV_SEPARATOR", "component": "firmware", "description": "...", "digest": hex}
      ]}},                                      # order, to name the first event that differs
      "allowAny": false                         # true: a document with no rule at all accepts any boot
    }

A missing field never silently means "anything goes": a document that sets no rule (no Secure Boot state,
signature databases, dbx, boot chain, command line or golden PCR) is refused unless it says so with
``"allowAny": true`` (and a document with rules must not say it).

All hex values are lowercase-insensitive SHA-256 values (64 hex digits):

* a *variable digest* is SHA-256 of the whole measured variable data (the EFI_SIGNATURE_LISTs);
* an *entry* of a signature database is identified by SHA-256 of the DER certificate for X.509
  entries, by the hash itself for EFI_CERT_SHA256 entries, and by the TBS hash for EFI_CERT_X509_SHA256
  entries (other types: SHA-256 of the entry data).

A PK/KEK/db variable passes when its variable digest is listed, or else when every entry it holds is in
``allowedEntries``; in both cases every ``requiredEntries`` value must be present. A forbidden
kernel-cmdline token ending in ``=`` forbids every token with that prefix (``init=`` forbids
``init=/bin/sh``); other forbidden and required tokens match whole tokens. Golden PCR values and event
digests are hex digests of their bank (40 hex digits for sha1, 64 for sha256); a golden PCR the quote
does not vouch for fails.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.model import (
    BootApplication,
    MeasuredVariable,
)
from trustedlaunch.uefi.siglist import EFI_CERT_SHA256, EFI_CERT_X509_SHA256, SignatureEntry

POLICY_VERSION = 1
SECURE_BOOT_PCR = 7
BOOT_APPLICATION_PCR = 4
KERNEL_CMDLINE_PCR = 8

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CMDLINE_TOKEN = re.compile(r'(?:[^\s"]+|"[^"]*")+')


class PolicyError(TrustedLaunchError):
    """A policy document that cannot be loaded; the message names the file and the offending field."""


@dataclass(frozen=True)
class VariablePolicy:
    """Allowed content of one signature-database variable (PK, KEK or db)."""

    variable_digests: frozenset[str] = frozenset()
    allowed_entries: frozenset[str] = frozenset()
    required_entries: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BootStep:
    """One position of the boot chain: the component name and the Authenticode digests allowed there."""

    component: str
    digests: frozenset[str]


@dataclass(frozen=True)
class CmdlineRules:
    """Rules on the measured kernel command line."""

    exact: str | None = None
    required_tokens: tuple[str, ...] = ()
    forbidden_tokens: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when no rule is set."""
        return self.exact is None and not self.required_tokens and not self.forbidden_tokens


@dataclass(frozen=True)
class ExpectedEvent:
    """One event expected in a golden PCR (its digest is in the bank of that PCR value)."""

    type_name: str  # e.g. "EV_EFI_BOOT_SERVICES_APPLICATION"
    component: str
    description: str
    digest: str


@dataclass(frozen=True)
class GoldenPcr:
    """The exact value one PCR of one bank must hold, and optionally the events that produce it."""

    bank: str
    pcr: int
    value: str
    events: tuple[ExpectedEvent, ...] = ()


@dataclass(frozen=True)
class Policy:
    """An attestation policy of a node pool (see the module docstring for the JSON schema)."""

    secure_boot: bool | None = None
    pk: VariablePolicy | None = None
    kek: VariablePolicy | None = None
    db: VariablePolicy | None = None
    dbx_required_entries: frozenset[str] = frozenset()
    boot_applications: tuple[BootStep, ...] | None = None
    kernel_cmdline: CmdlineRules = field(default_factory=CmdlineRules)
    require_valid_separators: bool = True
    golden_pcrs: tuple[GoldenPcr, ...] = ()
    allow_any: bool = False  # the document said "allowAny": true (it sets no rule, on purpose)

    @property
    def has_rules(self) -> bool:
        """True when the policy constrains the boot at all (any rule besides the separator check)."""
        return bool(
            self.secure_boot is not None
            or self.pk is not None
            or self.kek is not None
            or self.db is not None
            or self.dbx_required_entries
            or self.boot_applications is not None
            or not self.kernel_cmdline.is_empty
            or self.golden_pcrs
        )

    def to_dict(self) -> dict[str, Any]:
        """The policy as a JSON-ready dict (the documented schema, sorted lists; allowAny only when set)."""
        return {
            "version": POLICY_VERSION,
            "secureBoot": self.secure_boot,
            "pk": _variable_policy_to_dict(self.pk),
            "kek": _variable_policy_to_dict(self.kek),
            "db": _variable_policy_to_dict(self.db),
            "dbx": {"requiredEntries": sorted(self.dbx_required_entries)},
            "bootApplications": None
            if self.boot_applications is None
            else [{"component": s.component, "digests": sorted(s.digests)} for s in self.boot_applications],
            "kernelCmdline": {
                "exact": self.kernel_cmdline.exact,
                "requiredTokens": list(self.kernel_cmdline.required_tokens),
                "forbiddenTokens": list(self.kernel_cmdline.forbidden_tokens),
            },
            "requireValidSeparators": self.require_valid_separators,
            "pcrs": _golden_values_to_dict(self.golden_pcrs),
            "pcrEvents": _golden_events_to_dict(self.golden_pcrs),
        } | ({"allowAny": True} if self.allow_any else {})

    def to_json(self) -> str:
        """The policy as an indented JSON document."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, document: object, *, source: str = "policy") -> Policy:
        """Build a policy from its JSON form; raise PolicyError naming `source` and the bad field."""
        return _PolicyReader(source).read(document)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "policy") -> Policy:
        """Parse a policy JSON document; raise PolicyError on bad JSON or a bad field."""
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{source}: not a valid JSON document: {exc}") from None
        return cls.from_dict(document, source=source)

    def describe(self) -> dict[str, Any]:
        """A short JSON-friendly summary of what the policy enforces, for operators."""

        def variable(name: str, rule: VariablePolicy | None) -> str:
            if rule is None:
                return f"any {name}"
            return (
                f"{len(rule.variable_digests)} allowed variable digest(s), "
                f"{len(rule.allowed_entries)} allowed entr(y/ies), {len(rule.required_entries)} required"
            )

        return {
            "secureBoot": {True: "must be enabled", False: "must be disabled", None: "either"}[
                self.secure_boot
            ],
            "pk": variable("PK", self.pk),
            "kek": variable("KEK", self.kek),
            "db": variable("db", self.db),
            "dbx": f"{len(self.dbx_required_entries)} required revocation(s)",
            "bootChain": "any"
            if self.boot_applications is None
            else [f"{s.component} ({len(s.digests)} digest(s))" for s in self.boot_applications],
            "kernelCmdline": "any"
            if self.kernel_cmdline.is_empty
            else {
                "exact": self.kernel_cmdline.exact,
                "requiredTokens": list(self.kernel_cmdline.required_tokens),
                "forbiddenTokens": list(self.kernel_cmdline.forbidden_tokens),
            },
            "separators": "must be valid" if self.require_valid_separators else "not checked",
            "pcrs": "any"
            if not self.golden_pcrs
            else [
                f"{golden.bank} PCR{golden.pcr} = {short_digest(golden.value)}" for golden in self.golden_pcrs
            ],
        }


def load_policy(path: Path) -> Policy:
    """Read a policy JSON file; raise PolicyError naming the file and the bad field."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    return Policy.from_json(text, source=f"policy file {path}")


def _variable_policy_to_dict(rule: VariablePolicy | None) -> dict[str, list[str]] | None:
    if rule is None:
        return None
    return {
        "variableDigests": sorted(rule.variable_digests),
        "allowedEntries": sorted(rule.allowed_entries),
        "requiredEntries": sorted(rule.required_entries),
    }


def _golden_values_to_dict(golden_pcrs: tuple[GoldenPcr, ...]) -> dict[str, dict[str, str]] | None:
    if not golden_pcrs:
        return None
    values: dict[str, dict[str, str]] = {}
    for golden in golden_pcrs:
        values.setdefault(golden.bank, {})[str(golden.pcr)] = golden.value
    return values


def _golden_events_to_dict(golden_pcrs: tuple[GoldenPcr, ...]) -> dict[str, dict[str, list[dict[str, str]]]]:
    events: dict[str, dict[str, list[dict[str, str]]]] = {}
    for golden in golden_pcrs:
        if golden.events:
            events.setdefault(golden.bank, {})[str(golden.pcr)] = [
                {
                    "type": event.type_name,
                    "component": event.component,
                    "description": event.description,
                    "digest": event.digest,
                }
                for event in golden.events
            ]
    return events


class _PolicyReader:
    """Validates a decoded policy document field by field, naming the field in every error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str) -> PolicyError:
        return PolicyError(f"{self.source}: field '{path}': {problem}")

    def read(self, document: object) -> Policy:
        top = self.mapping(document, "(top level)", required=set(), optional=_TOP_LEVEL_FIELDS)
        version = top.get("version", POLICY_VERSION)
        if version != POLICY_VERSION:
            raise self.fail("version", f"unsupported policy version {version!r} (this verifier reads 1)")
        secure_boot = top.get("secureBoot")
        if secure_boot is not None and not isinstance(secure_boot, bool):
            raise self.fail("secureBoot", f"expected true, false or null, got {secure_boot!r}")
        separators = top.get("requireValidSeparators", True)
        if not isinstance(separators, bool):
            raise self.fail("requireValidSeparators", f"expected true or false, got {separators!r}")
        allow_any = top.get("allowAny", False)
        if not isinstance(allow_any, bool):
            raise self.fail("allowAny", f"expected true or false, got {allow_any!r}")
        dbx = top.get("dbx")
        dbx_required: frozenset[str] = frozenset()
        if dbx is not None:
            dbx_fields = self.mapping(dbx, "dbx", required=set(), optional={"requiredEntries"})
            dbx_required = self.digests(dbx_fields.get("requiredEntries", []), "dbx.requiredEntries")
        policy = Policy(
            secure_boot=secure_boot,
            pk=self.variable(top.get("pk"), "pk"),
            kek=self.variable(top.get("kek"), "kek"),
            db=self.variable(top.get("db"), "db"),
            dbx_required_entries=dbx_required,
            boot_applications=self.boot_steps(top.get("bootApplications")),
            kernel_cmdline=self.cmdline(top.get("kernelCmdline")),
            require_valid_separators=separators,
            golden_pcrs=self.golden_pcrs(top.get("pcrs"), top.get("pcrEvents")),
            allow_any=allow_any,
        )
        if allow_any and policy.has_rules:
            raise self.fail("allowAny", "true accepts any boot: a policy with rules must not set it")
        if not allow_any and not policy.has_rules:
            raise self.fail(
                "(top level)",
                "the policy sets no rule (secureBoot, pk, kek, db, dbx, bootApplications, kernelCmdline, "
                "pcrs): it would accept any boot. Add rules (`tl policy from-log` makes them), or say "
                '"allowAny": true to accept any boot on purpose',
            )
        return policy

    def bank_digest(self, value: object, bank: str, path: str) -> str:
        size = _BANK_HEX_DIGITS[bank]
        text = value.lower() if isinstance(value, str) else ""
        if len(text) != size or any(c not in "0123456789abcdef" for c in text):
            raise self.fail(path, f"expected {size} hex digits ({bank}), got {value!r}")
        return text

    def pcr_index(self, key: str, path: str) -> int:
        if not key.isdigit() or not 0 <= int(key) < 24:
            raise self.fail(path, f"PCR index {key!r} is not a number 0..23")
        return int(key)

    def golden_pcrs(self, values: object, events: object) -> tuple[GoldenPcr, ...]:
        if values is None:
            if events:
                raise self.fail("pcrEvents", "needs the golden values in 'pcrs'")
            return ()
        banks = self.mapping(values, "pcrs", required=set(), optional=set(_BANK_HEX_DIGITS))
        event_banks = self.mapping(events or {}, "pcrEvents", required=set(), optional=set(banks))
        golden = []
        for bank, by_pcr in banks.items():
            pcr_values = self.mapping(by_pcr, f"pcrs.{bank}", required=set(), optional=set(by_pcr))
            pcr_events = self.mapping(
                event_banks.get(bank, {}), f"pcrEvents.{bank}", required=set(), optional=set(pcr_values)
            )
            for key, value in pcr_values.items():
                path = f"pcrs.{bank}.{key}"
                golden.append(
                    GoldenPcr(
                        bank,
                        self.pcr_index(key, path),
                        self.bank_digest(value, bank, path),
                        self.expected_events(pcr_events.get(key, []), bank, f"pcrEvents.{bank}.{key}"),
                    )
                )
        return tuple(golden)

    def expected_events(self, value: object, bank: str, path: str) -> tuple[ExpectedEvent, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list of events, got {type(value).__name__}")
        events = []
        for position, item in enumerate(value):
            where = f"{path}[{position}]"
            names = {"type", "component", "description", "digest"}
            fields = self.mapping(item, where, required=names, optional=set())
            for name in ("type", "component", "description"):
                if not isinstance(fields[name], str):
                    raise self.fail(f"{where}.{name}", f"expected a string, got {fields[name]!r}")
            events.append(
                ExpectedEvent(
                    fields["type"],
                    fields["component"],
                    fields["description"],
                    self.bank_digest(fields["digest"], bank, f"{where}.digest"),
                )
            )
        return tuple(events)

    def mapping(
        self, value: object, path: str, *, required: set[str], optional: set[str]
    ) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object, got {type(value).__name__}")
        unknown = sorted(set(value) - required - optional)
        if unknown:
            known = ", ".join(sorted(required | optional))
            raise self.fail(path, f"unknown field(s) {', '.join(unknown)} (known: {known})")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(path, f"missing required field(s) {', '.join(missing)}")
        return value

    def digests(self, value: object, path: str) -> frozenset[str]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list of SHA-256 hex strings, got {type(value).__name__}")
        result = set()
        for position, item in enumerate(value):
            text = item.lower() if isinstance(item, str) else None
            if text is None or not _SHA256_HEX.fullmatch(text):
                raise self.fail(f"{path}[{position}]", f"expected 64 hex digits (SHA-256), got {item!r}")
            result.add(text)
        return frozenset(result)

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self.fail(path, f"expected a list of non-empty strings, got {value!r}")
        return tuple(value)

    def variable(self, value: object, path: str) -> VariablePolicy | None:
        if value is None:
            return None
        fields = self.mapping(
            value, path, required=set(), optional={"variableDigests", "allowedEntries", "requiredEntries"}
        )
        rule = VariablePolicy(
            variable_digests=self.digests(fields.get("variableDigests", []), f"{path}.variableDigests"),
            allowed_entries=self.digests(fields.get("allowedEntries", []), f"{path}.allowedEntries"),
            required_entries=self.digests(fields.get("requiredEntries", []), f"{path}.requiredEntries"),
        )
        if not rule.variable_digests and not rule.allowed_entries:
            raise self.fail(path, "needs variableDigests or allowedEntries (use null to allow any content)")
        return rule

    def boot_steps(self, value: object) -> tuple[BootStep, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail("bootApplications", f"expected a list of steps, got {type(value).__name__}")
        steps = []
        for position, item in enumerate(value):
            path = f"bootApplications[{position}]"
            fields = self.mapping(item, path, required={"component", "digests"}, optional=set())
            component = fields["component"]
            if not isinstance(component, str) or not component:
                raise self.fail(f"{path}.component", f"expected a non-empty string, got {component!r}")
            digests = self.digests(fields["digests"], f"{path}.digests")
            if not digests:
                raise self.fail(f"{path}.digests", "a step needs at least one allowed digest")
            steps.append(BootStep(component, digests))
        return tuple(steps)

    def cmdline(self, value: object) -> CmdlineRules:
        if value is None:
            return CmdlineRules()
        fields = self.mapping(
            value, "kernelCmdline", required=set(), optional={"exact", "requiredTokens", "forbiddenTokens"}
        )
        exact = fields.get("exact")
        if exact is not None and not isinstance(exact, str):
            raise self.fail("kernelCmdline.exact", f"expected a string or null, got {exact!r}")
        return CmdlineRules(
            exact=exact,
            required_tokens=self.strings(fields.get("requiredTokens", []), "kernelCmdline.requiredTokens"),
            forbidden_tokens=self.strings(fields.get("forbiddenTokens", []), "kernelCmdline.forbiddenTokens"),
        )


_TOP_LEVEL_FIELDS = {
    "version",
    "secureBoot",
    "pk",
    "kek",
    "db",
    "dbx",
    "bootApplications",
    "kernelCmdline",
    "requireValidSeparators",
    "pcrs",
    "pcrEvents",
    "allowAny",
}
_BANK_HEX_DIGITS = {"sha1": 40, "sha256": 64}


# --- identifiers of measured content -------------------------------------------------------------


def entry_id(entry: SignatureEntry) -> str:
    """The policy identifier of a signature-database entry (see the module docstring)."""
    if entry.signature_type == EFI_CERT_SHA256:
        return entry.data.hex()
    if entry.signature_type == EFI_CERT_X509_SHA256:
        return entry.data[:32].hex()
    return hashlib.sha256(entry.data).hexdigest()


def variable_digest(variable: MeasuredVariable) -> str:
    """SHA-256 (hex) of the whole measured variable data."""
    return hashlib.sha256(variable.data).hexdigest()


def component_from_path(device_path: str, position: int) -> str:
    """Name a boot application from its file name: shim, grub, kernel, else 'boot application #n'."""
    file_name = file_name_of(device_path).lower()
    if file_name.startswith(("bootx64", "bootaa64", "shim")):
        return "shim"
    if file_name.startswith("grub"):
        return "grub"
    if file_name.startswith(("vmlinuz", "linux", "bzimage")):
        return "kernel"
    return f"boot application #{position + 1}"


def boot_app_components(apps: Iterable[BootApplication]) -> list[str]:
    """Component names of the boot applications in load order (see component_from_path).

    An image without a file name loaded after GRUB is the kernel: GRUB (through shim) loads it from memory.
    """
    names: list[str] = []
    for position, app in enumerate(apps):
        name = component_from_path(app.device_path, position)
        if not file_name_of(app.device_path) and names and names[-1] in ("grub", "kernel"):
            name = "kernel"
        names.append(name)
    return names


def file_name_of(device_path: str) -> str:
    """The file name at the end of a boot application's device path ("" when it names no file)."""
    path = device_path.rstrip(")\x00 ")
    return path[max(path.rfind("\\"), path.rfind("/")) + 1 :]


def cmdline_tokens(cmdline: str) -> list[str]:
    """Split a kernel command line into tokens the way the kernel does (double quotes group)."""
    return _CMDLINE_TOKEN.findall(cmdline)


def short_digest(hex_digest: str) -> str:
    """A hex digest shortened for messages: its first 8 and last 4 digits."""
    return f"{hex_digest[:8]}…{hex_digest[-4:]}"
