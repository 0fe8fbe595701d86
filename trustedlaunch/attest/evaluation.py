"""Evaluate: a verified boot against a pool's attestation policy (the second half of the verifier).

Every policy check of the project lives in this module: Secure Boot state, PK/KEK/db content, required
dbx revocations, the boot chain, the kernel command line (and the root filesystem's dm-verity root hash on
it), separators and golden PCR values. It reads
only a `VerifiedBoot` (which only the verifier's first step makes), so a summary of a log no quote
vouches for can never pass as an attested boot. Every failure is reported, as one finding each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

from trustedlaunch.attest.machine_state import VerifiedBoot
from trustedlaunch.attest.policy import (
    BOOT_APPLICATION_PCR,
    KERNEL_CMDLINE_PCR,
    ROOT_HASH_ARG,
    SECURE_BOOT_PCR,
    BootStep,
    CmdlineRules,
    GoldenPcr,
    Policy,
    RootFilesystemRule,
    VariablePolicy,
    boot_app_components,
    cmdline_tokens,
    entry_id,
    file_name_of,
    short_digest,
    variable_digest,
)
from trustedlaunch.eventlog.model import BootApplication, BootSummary, EventLog, MeasuredVariable
from trustedlaunch.eventlog.predict import first_difference
from trustedlaunch.findings import Check, Finding


def evaluate(policy: Policy, boot: VerifiedBoot) -> list[Finding]:
    """Check a verified boot against a policy; return every failure (an empty list means it passes).

    Golden PCR rules read the PCR values the quote vouches for; their findings name the first event of
    the log that differs from the expected sequence.
    """
    summary = boot.summary
    findings: list[Finding] = []
    findings.extend(_check_secure_boot(policy, summary))
    for name, check, rule in (
        ("PK", Check.PLATFORM_KEY, policy.pk),
        ("KEK", Check.KEY_EXCHANGE_KEY, policy.kek),
        ("db", Check.SIGNATURE_DB, policy.db),
    ):
        if rule is not None:
            findings.extend(_check_variable(name, check, rule, summary.variables.get(name)))
    if policy.dbx_required_entries:
        findings.extend(_check_dbx(policy.dbx_required_entries, summary.variables.get("dbx")))
    if policy.boot_applications is not None:
        findings.extend(_check_boot_applications(policy.boot_applications, summary.boot_apps))
    if not policy.kernel_cmdline.is_empty:
        findings.extend(_check_cmdline(policy.kernel_cmdline, summary))
    if policy.root_filesystem is not None:
        findings.extend(_check_root_filesystem(policy.root_filesystem, summary))
    if policy.require_valid_separators and not summary.separators_ok:
        findings.append(
            Finding(
                Check.SEPARATOR,
                "firmware",
                "an EV_SEPARATOR event does not carry the normal value 0x00000000: the firmware reported "
                "an error while measuring the pre-OS environment",
            )
        )
    for golden in policy.golden_pcrs:
        findings.extend(_check_golden_pcr(golden, boot.log, boot.pcr_values))
    return findings


def _check_golden_pcr(
    golden: GoldenPcr, log: EventLog, pcr_values: Mapping[str, Mapping[int, bytes]]
) -> list[Finding]:
    value = pcr_values.get(golden.bank, {}).get(golden.pcr)
    name = f"{golden.bank} PCR{golden.pcr}"
    if value is None:
        return [
            Finding(
                Check.PCR_VALUE,
                "quote",
                f"the policy has a golden value for {name} but the quote does not vouch for it: "
                f"quote that PCR in the {golden.bank} bank",
                pcr=golden.pcr,
            )
        ]
    if value.hex() == golden.value:
        return []
    message = (
        f"{name} is {short_digest(value.hex())}, the policy's golden value is {short_digest(golden.value)}"
    )
    component, event_index = "firmware", None
    if golden.events:
        expected = [
            (f"{e.type_name} ({e.component}: {e.description})", bytes.fromhex(e.digest))
            for e in golden.events
        ]
        difference = first_difference(log, golden.pcr, golden.bank, expected)
        if difference is not None:
            event_index = difference.log_event_index
            position = difference.position
            if difference.expected is None:
                component = "event log"
                message += f"; event #{event_index} is measured after every expected event of {name}"
            else:
                component = golden.events[position].component
                if event_index is None:
                    message += f"; the log ends before the expected {difference.expected}"
                else:
                    measured = log.events[event_index]
                    digest = difference.log_digest.hex() if difference.log_digest else "none"
                    message += (
                        f"; first difference at event #{event_index}, {measured.type_name} with digest "
                        f"{short_digest(digest)}, where the policy expects {difference.expected} with digest "
                        f"{short_digest(golden.events[position].digest)}"
                    )
    return [Finding(Check.PCR_VALUE, component, message, pcr=golden.pcr, event_index=event_index)]


def _check_secure_boot(policy: Policy, summary: BootSummary) -> list[Finding]:
    if policy.secure_boot is None or summary.secure_boot == policy.secure_boot:
        return []
    variable = summary.variables.get("SecureBoot")
    wanted = "enabled" if policy.secure_boot else "disabled"
    if summary.secure_boot is None:
        state = "not measured (no or an empty SecureBoot variable in PCR7)"
    else:
        state = "enabled" if summary.secure_boot else "disabled"
    where = f" (SecureBoot variable, event #{variable.event.index})" if variable else ""
    return [
        Finding(
            Check.SECURE_BOOT,
            "firmware",
            f"Secure Boot is {state}{where} but the policy requires it {wanted}",
            pcr=variable.event.pcr if variable else SECURE_BOOT_PCR,
            event_index=variable.event.index if variable else None,
        )
    ]


def _check_variable(
    name: str, check: Check, rule: VariablePolicy, variable: MeasuredVariable | None
) -> list[Finding]:
    if variable is None:
        return [
            Finding(
                check,
                name,
                f"{name} was not measured into PCR7, so its content cannot be checked against the policy",
                pcr=SECURE_BOOT_PCR,
            )
        ]
    findings = []
    where = {"pcr": variable.event.pcr, "event_index": variable.event.index}
    digest, present = _variable_facts(variable)
    if digest not in rule.variable_digests:
        if not rule.allowed_entries:
            findings.append(
                Finding(
                    check,
                    name,
                    f"{name} content (SHA-256 {digest}) is not in the policy's allowed variable digests: "
                    f"{_short_list(rule.variable_digests)}",
                    **where,
                )
            )
        else:
            extra = present - rule.allowed_entries
            if extra:
                findings.append(
                    Finding(
                        check,
                        name,
                        f"{name} holds {len(extra)} entr(y/ies) the policy does not allow: "
                        f"{', '.join(_describe_entries(variable, extra))}",
                        **where,
                    )
                )
    missing = rule.required_entries - present
    if missing:
        findings.append(
            Finding(
                check,
                name,
                f"{name} lacks {len(missing)} entr(y/ies) the policy requires: {', '.join(sorted(missing))}",
                **where,
            )
        )
    return findings


def _describe_entries(variable: MeasuredVariable, ids: AbstractSet[str]) -> list[str]:
    described = []
    for entry in variable.signatures:
        identifier = entry_id(entry)
        if identifier in ids:
            if entry.certificate is not None:
                described.append(f"certificate '{entry.certificate.subject.rfc4514_string()}' ({identifier})")
            else:
                described.append(identifier)
            ids = ids - {identifier}
    return described


def _check_dbx(required: frozenset[str], dbx: MeasuredVariable | None) -> list[Finding]:
    if dbx is None:
        return [
            Finding(
                Check.FORBIDDEN_DB,
                "dbx",
                f"dbx was not measured into PCR7; the policy requires {len(required)} revocation(s) in it",
                pcr=SECURE_BOOT_PCR,
            )
        ]
    missing = required - _variable_facts(dbx)[1]
    if not missing:
        return []
    return [
        Finding(
            Check.FORBIDDEN_DB,
            "dbx",
            f"dbx is older than the policy: {len(missing)} required revocation(s) missing: "
            f"{', '.join(sorted(missing))}",
            pcr=dbx.event.pcr,
            event_index=dbx.event.index,
        )
    ]


def _check_boot_applications(steps: tuple[BootStep, ...], apps: tuple[BootApplication, ...]) -> list[Finding]:
    findings = []
    for position, app in enumerate(apps[: len(steps)]):
        step = steps[position]
        digest = app.event.digests.get("sha256")
        if digest is not None and digest.hex() in step.digests:
            continue
        if digest is None:
            problem = f"has no SHA-256 digest in the log (banks: {', '.join(app.event.digests)})"
        else:
            problem = (
                f"digest {digest.hex()} is not in the pool's image policy for {step.component} "
                f"(step {position + 1}); allowed: {_short_list(step.digests)}"
            )
        findings.append(
            Finding(
                Check.BOOT_APPLICATION,
                step.component,
                f"{_app_label(app, position)} {problem}",
                pcr=app.event.pcr,
                event_index=app.event.index,
            )
        )
    if len(apps) > len(steps):
        chain = " -> ".join(s.component for s in steps) or "none"
        names = boot_app_components(apps)
        for position in range(len(steps), len(apps)):
            app = apps[position]
            findings.append(
                Finding(
                    Check.BOOT_APPLICATION,
                    names[position],
                    f"{_app_label(app, position)} is boot application #{position + 1} but the policy allows "
                    f"only {len(steps)} ({chain})",
                    pcr=app.event.pcr,
                    event_index=app.event.index,
                )
            )
    for position in range(len(apps), len(steps)):
        findings.append(
            Finding(
                Check.BOOT_APPLICATION,
                steps[position].component,
                f"the policy expects {steps[position].component} as boot application #{position + 1} "
                f"but only {len(apps)} were loaded",
                pcr=BOOT_APPLICATION_PCR,
            )
        )
    return findings


def _app_label(app: BootApplication, position: int) -> str:
    file_name = file_name_of(app.device_path)
    return f"{file_name} ({app.device_path})" if file_name else f"boot application #{position + 1}"


def _check_cmdline(rules: CmdlineRules, summary: BootSummary) -> list[Finding]:
    event = summary.kernel_cmdline_event
    where = {
        "pcr": event.pcr if event else KERNEL_CMDLINE_PCR,
        "event_index": event.index if event else None,
    }
    cmdline = summary.kernel_cmdline
    if cmdline is None:
        return [
            Finding(
                Check.KERNEL_CMDLINE,
                "kernel",
                "no kernel command line was measured, but the policy has command-line rules",
                **where,
            )
        ]
    findings = []
    if rules.exact is not None and cmdline != rules.exact:
        differs_at = next(
            (i for i, (a, b) in enumerate(zip(cmdline, rules.exact, strict=False)) if a != b),
            min(len(cmdline), len(rules.exact)),
        )
        findings.append(
            Finding(
                Check.KERNEL_CMDLINE,
                "kernel",
                f"kernel command line {cmdline!r} differs from the policy's exact {rules.exact!r} "
                f"from character {differs_at} on",
                **where,
            )
        )
    tokens = cmdline_tokens(cmdline)
    for forbidden in rules.forbidden_tokens:
        hits = [t for t in tokens if (t.startswith(forbidden) if forbidden.endswith("=") else t == forbidden)]
        if hits:
            findings.append(
                Finding(
                    Check.KERNEL_CMDLINE,
                    "kernel",
                    f"kernel command line has forbidden token(s) {', '.join(hits)} (rule {forbidden!r})",
                    **where,
                )
            )
    missing = [token for token in rules.required_tokens if token not in tokens]
    if missing:
        findings.append(
            Finding(
                Check.KERNEL_CMDLINE,
                "kernel",
                f"kernel command line lacks required token(s) {', '.join(missing)}",
                **where,
            )
        )
    return findings


def _check_root_filesystem(rule: RootFilesystemRule, summary: BootSummary) -> list[Finding]:
    """The measured command line must carry exactly the rule's dm-verity root hash (one ROOT_HASH_ARG): the
    node's root filesystem is then the node image's, block for block (dm-verity stops any other read)."""
    event = summary.kernel_cmdline_event
    image = f"node image {rule.node_image}" if rule.node_image else "the node image"
    prefix = f"{ROOT_HASH_ARG}="
    measured = [
        token.removeprefix(prefix)
        for token in cmdline_tokens(summary.kernel_cmdline or "")
        if token.startswith(prefix)
    ]
    if measured == [rule.root_hash]:
        return []
    if summary.kernel_cmdline is None:
        found = "no kernel command line was measured"
    elif not measured:
        found = f"the measured command line has no {ROOT_HASH_ARG}"
    else:
        found = f"measured {', '.join(value[:80] for value in measured[:4])}"
    return [
        Finding(
            Check.ROOT_FILESYSTEM,
            "root filesystem",
            f"root filesystem hash differs from {image}: {found}, expected {rule.root_hash}",
            pcr=event.pcr if event else KERNEL_CMDLINE_PCR,
            event_index=event.index if event else None,
        )
    ]


_VARIABLE_FACTS_LIMIT = 4096
_VARIABLE_FACTS_MAX_DATA = 64 * 1024  # a real dbx is ~15 KB: 4096 cached entries stay under 256 MB
_variable_facts_cache: dict[bytes, tuple[str, frozenset[str]]] = {}


def _variable_facts(variable: MeasuredVariable) -> tuple[str, frozenset[str]]:
    """(variable digest, entry ids) of a variable, memoised by its data (its entries are parsed from it).

    Verifiers evaluate the same few PK/KEK/db/dbx contents over and over; a dbx holds hundreds of entries.
    """
    facts = _variable_facts_cache.get(variable.data)
    if facts is None:
        facts = (variable_digest(variable), frozenset(entry_id(entry) for entry in variable.signatures))
        if len(variable.data) <= _VARIABLE_FACTS_MAX_DATA:  # a caller's huge variables never fill memory
            if len(_variable_facts_cache) >= _VARIABLE_FACTS_LIMIT:
                _variable_facts_cache.clear()
            _variable_facts_cache[variable.data] = facts
    return facts


def _short_list(values: Iterable[str], limit: int = 4) -> str:
    ordered = sorted(values)
    shown = ", ".join(short_digest(value) for value in ordered[:limit])
    return shown + (f" (+{len(ordered) - limit} more)" if len(ordered) > limit else "")
