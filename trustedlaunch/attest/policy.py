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
      "rootFilesystem": {"rootHash": hex, "nodeImage": "..." | null},  # optional: the dm-verity root hash
                                                # the measured command line must carry (ROOT_HASH_ARG)
      "allowAny": false                         # true: a document with no rule at all accepts any boot
    }

The document is read through a declared schema (pydantic models, `_PolicySchema`): unknown fields are
refused, and every error names the field by its path (e.g. `db.allowedEntries[0]`). A missing field never
silently means "anything goes": a document that sets no rule (no Secure Boot state,
signature databases, dbx, boot chain, command line, golden PCR or root filesystem) is refused unless it says
so with ``"allowAny": true`` (and a document with rules must not say it).

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

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

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
# The kernel command line argument carrying the dm-verity root hash of a node's root filesystem (the node
# image writes it there as trustedlaunch.node.image.VERITY_ROOTHASH_ARG; attest and node are independent).
ROOT_HASH_ARG = "trustedlaunch.verity_roothash"

_HEX = re.compile(r"[0-9a-f]*")
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
class RootFilesystemRule:
    """The root filesystem a node must boot: the dm-verity root hash its measured kernel command line carries
    (ROOT_HASH_ARG), and the node image it comes from (named in findings)."""

    root_hash: str
    node_image: str | None = None


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
    root_filesystem: RootFilesystemRule | None = None

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
            or self.root_filesystem is not None
        )

    def to_dict(self) -> dict[str, Any]:
        """The policy as a JSON-ready dict (the documented schema, sorted lists; allowAny and rootFilesystem
        only when set)."""
        root = self.root_filesystem
        root_filesystem = (
            {}
            if root is None
            else {"rootFilesystem": {"rootHash": root.root_hash, "nodeImage": root.node_image}}
        )
        return (
            {
                "version": POLICY_VERSION,
                "secureBoot": self.secure_boot,
                "pk": _variable_policy_to_dict(self.pk),
                "kek": _variable_policy_to_dict(self.kek),
                "db": _variable_policy_to_dict(self.db),
                "dbx": {"requiredEntries": sorted(self.dbx_required_entries)},
                "bootApplications": None
                if self.boot_applications is None
                else [
                    {"component": s.component, "digests": sorted(s.digests)} for s in self.boot_applications
                ],
                "kernelCmdline": {
                    "exact": self.kernel_cmdline.exact,
                    "requiredTokens": list(self.kernel_cmdline.required_tokens),
                    "forbiddenTokens": list(self.kernel_cmdline.forbidden_tokens),
                },
                "requireValidSeparators": self.require_valid_separators,
                "pcrs": _golden_values_to_dict(self.golden_pcrs),
                "pcrEvents": _golden_events_to_dict(self.golden_pcrs),
            }
            | root_filesystem
            | ({"allowAny": True} if self.allow_any else {})
        )

    def to_json(self) -> str:
        """The policy as an indented JSON document."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, document: object, *, source: str = "policy") -> Policy:
        """Build a policy from its JSON form; raise PolicyError naming `source` and the bad field."""
        return _read_document(document, source)

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
            "rootFilesystem": "any"
            if self.root_filesystem is None
            else f"dm-verity root hash {self.root_filesystem.root_hash}"
            + (f" (node image {self.root_filesystem.node_image})" if self.root_filesystem.node_image else ""),
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


# --- the policy document's schema ----------------------------------------------------------------


class _Schema(BaseModel):
    """A policy document object: only its declared fields (camelCase), every leaf checked by a validator
    whose message names what was expected, as `Policy.from_dict` reports it with the field's path."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, alias_generator=to_camel)

    @model_validator(mode="before")
    @classmethod
    def _declared_fields_only(cls, value: object) -> object:
        if not isinstance(value, dict):
            raise _problem(f"expected an object, got {type(value).__name__}")
        known, required = _document_fields(cls)
        unknown = sorted(set(value) - known)
        if unknown:
            raise _problem(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        missing = sorted(required - set(value))
        if missing:
            raise _problem(f"missing required field(s) {', '.join(missing)}")
        return value


@functools.cache
def _document_fields(schema: type[_Schema]) -> tuple[frozenset[str], frozenset[str]]:
    """(every field, the required fields) of a schema object, by their names in the document."""
    fields = schema.model_fields
    return (
        frozenset(field.alias or name for name, field in fields.items()),
        frozenset(field.alias or name for name, field in fields.items() if field.is_required()),
    )


def _problem(message: str, *, path: str | None = None) -> PydanticCustomError:
    """A schema error worded for an operator; `path` names a field below the one being validated."""
    return PydanticCustomError("policy", "{problem}", {"problem": message, "path": path})


def _checked(
    test: Callable[[Any], bool], expected: str, *, show: Callable[[Any], str] = repr
) -> BeforeValidator:
    """A leaf validator: `test` the raw value, else fail with "expected <expected>, got <value>"."""

    def check(value: Any) -> Any:
        if not test(value):
            raise _problem(f"expected {expected}, got {show(value)}")
        return value

    return BeforeValidator(check)


def _hex_digest(digits: int, expected: str) -> BeforeValidator:
    def check(value: Any) -> str:
        text = value.lower() if isinstance(value, str) else ""
        if len(text) != digits or not _HEX.fullmatch(text):
            raise _problem(f"expected {expected}, got {value!r}")
        return text

    return BeforeValidator(check)


def _kind(value: Any) -> str:
    return type(value).__name__


_Sha256 = Annotated[str, _hex_digest(64, "64 hex digits (SHA-256)")]
_Sha256List = Annotated[
    list[_Sha256], _checked(lambda v: isinstance(v, list), "a list of SHA-256 hex strings", show=_kind)
]
_Tokens = Annotated[
    list[str],
    _checked(
        lambda v: isinstance(v, list) and all(isinstance(t, str) and t for t in v),
        "a list of non-empty strings",
    ),
]
_OptionalBool = Annotated[
    bool | None, _checked(lambda v: v is None or isinstance(v, bool), "true, false or null")
]
_Bool = Annotated[bool, _checked(lambda v: isinstance(v, bool), "true or false")]
_Text = Annotated[str, _checked(lambda v: isinstance(v, str), "a string")]
_Name = Annotated[str, _checked(lambda v: isinstance(v, str) and bool(v), "a non-empty string")]


def _policy_version(value: Any) -> int:
    if value != POLICY_VERSION:
        raise _problem(f"unsupported policy version {value!r} (this verifier reads {POLICY_VERSION})")
    return POLICY_VERSION


class _VariableSchema(_Schema):
    variable_digests: _Sha256List = Field(default_factory=list)
    allowed_entries: _Sha256List = Field(default_factory=list)
    required_entries: _Sha256List = Field(default_factory=list)

    @model_validator(mode="after")
    def _allows_something(self) -> _VariableSchema:
        if not self.variable_digests and not self.allowed_entries:
            raise _problem("needs variableDigests or allowedEntries (use null to allow any content)")
        return self


class _DbxSchema(_Schema):
    required_entries: _Sha256List = Field(default_factory=list)


class _BootStepSchema(_Schema):
    component: _Name
    digests: _Sha256List

    @field_validator("digests")
    @classmethod
    def _at_least_one(cls, digests: list[str]) -> list[str]:
        if not digests:
            raise _problem("a step needs at least one allowed digest")
        return digests


class _CmdlineSchema(_Schema):
    exact: Annotated[str | None, _checked(lambda v: v is None or isinstance(v, str), "a string or null")] = (
        None
    )
    required_tokens: _Tokens = Field(default_factory=list)
    forbidden_tokens: _Tokens = Field(default_factory=list)


def _pcr_index(key: Any) -> str:
    if not isinstance(key, str) or not key.isdigit() or not 0 <= int(key) < 24:
        raise _problem(f"PCR index {key!r} is not a number 0..23")
    return key


_PcrIndex = Annotated[str, BeforeValidator(_pcr_index)]
_Object = _checked(lambda v: isinstance(v, dict), "an object", show=_kind)
_Events = _checked(lambda v: isinstance(v, list), "a list of events", show=_kind)


_Sha1Bank = Annotated[str, _hex_digest(40, "40 hex digits (sha1)")]
_Sha256Bank = Annotated[str, _hex_digest(64, "64 hex digits (sha256)")]


class _EventSchema(_Schema):
    type: _Text
    component: _Text
    description: _Text


class _Sha1EventSchema(_EventSchema):
    digest: _Sha1Bank


class _Sha256EventSchema(_EventSchema):
    digest: _Sha256Bank


class _RootFilesystemSchema(_Schema):
    root_hash: _Sha256
    node_image: Annotated[
        str | None,
        _checked(lambda v: v is None or (isinstance(v, str) and bool(v)), "a non-empty string or null"),
    ] = None


class _PcrsSchema(_Schema):
    """Golden values per bank: PCR index -> hex digest of that bank."""

    model_config = ConfigDict(alias_generator=None)

    sha1: Annotated[dict[_PcrIndex, _Sha1Bank], _Object] = Field(default_factory=dict)
    sha256: Annotated[dict[_PcrIndex, _Sha256Bank], _Object] = Field(default_factory=dict)


class _PcrEventsSchema(_Schema):
    """Expected events per bank: PCR index -> the events that produce its golden value, in order."""

    model_config = ConfigDict(alias_generator=None)

    sha1: Annotated[dict[str, Annotated[list[_Sha1EventSchema], _Events]], _Object] = Field(
        default_factory=dict
    )
    sha256: Annotated[dict[str, Annotated[list[_Sha256EventSchema], _Events]], _Object] = Field(
        default_factory=dict
    )


class _PolicySchema(_Schema):
    """The policy document (see the module docstring)."""

    # in the order problems are reported: the first field that fails names the error
    version: Annotated[int, BeforeValidator(_policy_version)] = POLICY_VERSION
    secure_boot: _OptionalBool = None
    require_valid_separators: _Bool = True
    allow_any: _Bool = False
    dbx: _DbxSchema | None = None
    pk: _VariableSchema | None = None
    kek: _VariableSchema | None = None
    db: _VariableSchema | None = None
    boot_applications: Annotated[
        list[_BootStepSchema] | None,
        _checked(lambda v: v is None or isinstance(v, list), "a list of steps", show=_kind),
    ] = None
    kernel_cmdline: _CmdlineSchema | None = None
    pcrs: _PcrsSchema | None = None
    pcr_events: _PcrEventsSchema | None = None
    root_filesystem: _RootFilesystemSchema | None = None

    @field_validator("pcr_events", mode="before")
    @classmethod
    def _describes_golden_pcrs(cls, events: Any, info: ValidationInfo) -> Any:
        """`pcrEvents` may only describe PCRs that `pcrs` sets (an empty or false value describes none)."""
        if "pcrs" not in info.data:  # `pcrs` failed: its own error is reported
            return events
        pcrs: _PcrsSchema | None = info.data["pcrs"]
        if pcrs is None:
            if events:
                raise _problem("needs the golden values in 'pcrs'")
            return None
        if not events:
            return None
        if isinstance(events, dict):
            banks = pcrs.model_fields_set
            unknown = sorted(set(events) - banks)
            if unknown:
                raise _problem(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(banks))})")
            for bank, by_pcr in events.items():
                golden = getattr(pcrs, bank)
                unknown = sorted(set(by_pcr) - set(golden)) if isinstance(by_pcr, dict) else []
                if unknown:
                    known = ", ".join(sorted(golden))
                    raise _problem(
                        f"unknown field(s) {', '.join(unknown)} (known: {known})", path=f"pcrEvents.{bank}"
                    )
        return events


def _read_document(document: object, source: str) -> Policy:
    """Validate a decoded policy document against `_PolicySchema`; the first problem, with its field's path,
    becomes a PolicyError naming `source`."""

    def fail(path: str, problem: str) -> PolicyError:
        return PolicyError(f"{source}: field '{path}': {problem}")

    try:
        schema = _PolicySchema.model_validate(document)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        path = (error.get("ctx") or {}).get("path") or _field_path(error["loc"])
        raise fail(path, error["msg"]) from None
    assert isinstance(document, dict)  # the schema accepted it as an object
    policy = Policy(
        secure_boot=schema.secure_boot,
        pk=_variable_policy(schema.pk),
        kek=_variable_policy(schema.kek),
        db=_variable_policy(schema.db),
        dbx_required_entries=frozenset(schema.dbx.required_entries) if schema.dbx else frozenset(),
        boot_applications=None
        if schema.boot_applications is None
        else tuple(BootStep(step.component, frozenset(step.digests)) for step in schema.boot_applications),
        kernel_cmdline=CmdlineRules()
        if schema.kernel_cmdline is None
        else CmdlineRules(
            schema.kernel_cmdline.exact,
            tuple(schema.kernel_cmdline.required_tokens),
            tuple(schema.kernel_cmdline.forbidden_tokens),
        ),
        require_valid_separators=schema.require_valid_separators,
        golden_pcrs=_golden_pcrs(schema, document.get("pcrs")),
        allow_any=schema.allow_any,
        root_filesystem=None
        if schema.root_filesystem is None
        else RootFilesystemRule(schema.root_filesystem.root_hash, schema.root_filesystem.node_image),
    )
    if policy.allow_any and policy.has_rules:
        raise fail("allowAny", "true accepts any boot: a policy with rules must not set it")
    if not policy.allow_any and not policy.has_rules:
        raise fail(
            "(top level)",
            "the policy sets no rule (secureBoot, pk, kek, db, dbx, bootApplications, kernelCmdline, "
            "pcrs, rootFilesystem): it would accept any boot. Add rules (`tl policy from-log` makes them), "
            'or say "allowAny": true to accept any boot on purpose',
        )
    return policy


def _field_path(loc: tuple[int | str, ...]) -> str:
    """`db.allowedEntries[0]` for ("db", "allowedEntries", 0); a dict key's own check names the key."""
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "(top level)"


def _variable_policy(schema: _VariableSchema | None) -> VariablePolicy | None:
    if schema is None:
        return None
    return VariablePolicy(
        frozenset(schema.variable_digests),
        frozenset(schema.allowed_entries),
        frozenset(schema.required_entries),
    )


def _golden_pcrs(schema: _PolicySchema, values: object) -> tuple[GoldenPcr, ...]:
    """The golden PCRs in the document's order of banks, each with its expected events."""
    if schema.pcrs is None:
        return ()
    assert isinstance(values, dict)  # the schema accepted it as an object
    golden = []
    for bank in values:
        pcr_values: dict[str, str] = getattr(schema.pcrs, bank)
        pcr_events: dict[str, list[Any]] = getattr(schema.pcr_events, bank) if schema.pcr_events else {}
        for key, value in pcr_values.items():
            expected = tuple(
                ExpectedEvent(event.type, event.component, event.description, event.digest)
                for event in pcr_events.get(key, [])
            )
            golden.append(GoldenPcr(bank, int(key), value, expected))
    return tuple(golden)


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
