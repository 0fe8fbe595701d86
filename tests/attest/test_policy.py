"""Attestation policy against summaries of real event logs (GCE, RHEL OVMF, real QEMU/OVMF boots)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography import x509
from verified_boots import vouched

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evaluation import evaluate
from trustedlaunch.attest.policy import (
    BootStep,
    CmdlineRules,
    Policy,
    PolicyError,
    VariablePolicy,
    cmdline_tokens,
    load_policy,
)
from trustedlaunch.eventlog.model import BootSummary, EventLog
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.findings import Check, Finding
from trustedlaunch.uefi.siglist import SignatureEntry, parse_signature_lists

RHEL8 = "go-tpm-tools/eventlogs/rhel8-uefi.bin"
UBUNTU_NO_SB = "go-tpm-tools/eventlogs/ubuntu-2104-no-secure-boot.bin"
KEYLIME_SB = "keylime/binary_bios_measurements-secureboot"
COS101 = "go-tpm-tools/eventlogs/cos-101-amd-sev.bin"
OVMF_SHIM = "qemu-ovmf/shim_evlog.bin"
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003

GOOD_LOGS = [
    RHEL8,
    UBUNTU_NO_SB,
    KEYLIME_SB,
    COS101,
    OVMF_SHIM,
    "qemu-ovmf/ovmf_evlog.bin",
    "qemu-ovmf/sb_evlog.bin",
    "keylime/mb_log.bin",
    "go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin",
]


def _load(testdata: Path, name: str) -> tuple[EventLog, BootSummary]:
    log = parse_event_log((testdata / name).read_bytes())
    return log, summarize(log)


def _app_event_indexes(log: EventLog) -> list[int]:
    """Indexes of EV_EFI_BOOT_SERVICES_APPLICATION events, read straight from the parsed log."""
    return [e.index for e in log.events if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION]


def _dbx_update_entries(path: Path) -> set[str]:
    """Entry ids (hashes; SHA-256 of certificates) of a signed dbx update: AUTHENTICATION_2 then siglists."""
    data = path.read_bytes()
    (win_certificate_length,) = struct.unpack_from("<I", data, 16)  # after the 16-byte EFI_TIME
    return _entry_ids(parse_signature_lists(data[16 + win_certificate_length :], str(path)))


def _entry_ids(entries: Iterable[SignatureEntry]) -> set[str]:
    """Hash entries by their hash, certificates by SHA-256 of their DER (the documented policy ids)."""
    return {e.data.hex() if e.certificate is None else hashlib.sha256(e.data).hexdigest() for e in entries}


def _fingerprint(path: Path) -> str:
    data = path.read_bytes()
    certificate = (
        x509.load_pem_x509_certificate(data)
        if b"-----BEGIN" in data
        else x509.load_der_x509_certificate(data)
    )
    return certificate.fingerprint(certificate.signature_hash_algorithm.__class__()).hex()


# --- derived policies ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_LOGS)
def test_log_passes_its_own_derived_policy_and_it_round_trips(testdata: Path, name: str) -> None:
    log, summary = _load(testdata, name)
    policy = policy_from_summary(summary)
    assert evaluate(policy, vouched(summary)) == []
    assert policy.boot_applications is not None
    assert len(policy.boot_applications) == len(_app_event_indexes(log))
    assert Policy.from_json(policy.to_json()) == policy


def test_derived_policy_of_rhel8_names_the_chain_and_pins_secure_boot(testdata: Path) -> None:
    log, summary = _load(testdata, RHEL8)
    policy = policy_from_summary(summary)
    assert policy.secure_boot is True
    assert policy.boot_applications is not None
    assert [step.component for step in policy.boot_applications] == ["shim", "grub", "kernel"]
    apps = [e for e in log.events if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION]
    assert [step.digests for step in policy.boot_applications] == [
        frozenset({e.digests["sha256"].hex()}) for e in apps
    ]

    _, ubuntu = _load(testdata, UBUNTU_NO_SB)
    exact = policy_from_summary(ubuntu).kernel_cmdline.exact
    assert exact is not None and exact.endswith("ro console=ttyS0 panic=-1")


def test_derived_policy_of_a_secure_boot_off_log_requires_it_off(testdata: Path) -> None:
    _, summary = _load(testdata, UBUNTU_NO_SB)
    assert policy_from_summary(summary).secure_boot is False
    _, rhel8 = _load(testdata, RHEL8)
    findings = evaluate(Policy(secure_boot=False), vouched(rhel8))
    assert [f.check for f in findings] == [Check.SECURE_BOOT]
    assert "enabled" in findings[0].message and "requires it disabled" in findings[0].message


# --- Secure Boot state -----------------------------------------------------------------------------


def test_secure_boot_required_but_off_names_pcr7_and_the_secureboot_event(testdata: Path) -> None:
    log, summary = _load(testdata, UBUNTU_NO_SB)
    findings = evaluate(Policy(secure_boot=True), vouched(summary))
    assert len(findings) == 1
    finding = findings[0]
    assert finding.check is Check.SECURE_BOOT and finding.pcr == 7
    assert finding.event_index is not None
    event = log.events[finding.event_index]
    assert event.event_type == EV_EFI_VARIABLE_DRIVER_CONFIG
    assert "SecureBoot".encode("utf-16-le") in event.data
    assert event.data.endswith(b"\x00")  # the measured value: 0 = disabled
    assert "Secure Boot is disabled" in finding.message and "requires it enabled" in finding.message


# --- PK / KEK / db ---------------------------------------------------------------------------------


def test_db_missing_a_required_certificate(testdata: Path) -> None:
    _, summary = _load(testdata, RHEL8)
    gce_pk = _fingerprint(testdata / "go-tpm-tools/secure-boot/GcePk.crt")
    db = summary.variables["db"]
    present = {hashlib.sha256(e.data).hexdigest() for e in db.signatures if e.certificate is not None}
    assert gce_pk not in present
    policy = Policy(
        db=VariablePolicy(allowed_entries=frozenset(present | {gce_pk}), required_entries=frozenset({gce_pk}))
    )
    findings = evaluate(policy, vouched(summary))
    assert findings == [
        Finding(
            Check.SIGNATURE_DB,
            "db",
            f"db lacks 1 entr(y/ies) the policy requires: {gce_pk}",
            pcr=7,
            event_index=db.event.index,
        )
    ]


def test_pk_not_in_allowed_digests_or_entries(testdata: Path) -> None:
    _, rhel8 = _load(testdata, RHEL8)
    _, keylime = _load(testdata, KEYLIME_SB)
    gce_policy = policy_from_summary(rhel8)
    findings = evaluate(Policy(pk=gce_policy.pk, kek=gce_policy.kek), vouched(keylime))
    checks = {f.check for f in findings}
    assert Check.PLATFORM_KEY in checks
    pk_finding = next(f for f in findings if f.check is Check.PLATFORM_KEY and "does not allow" in f.message)
    assert pk_finding.event_index == keylime.variables["PK"].event.index and pk_finding.pcr == 7
    pk_cert = keylime.variables["PK"].signatures[0].certificate
    assert pk_cert is not None
    assert pk_cert.subject.rfc4514_string() in pk_finding.message


def test_whole_variable_digest_pin(testdata: Path) -> None:
    _, rhel8 = _load(testdata, RHEL8)
    _, keylime = _load(testdata, KEYLIME_SB)
    rhel8_kek = hashlib.sha256(rhel8.variables["KEK"].data).hexdigest()
    policy = Policy(kek=VariablePolicy(variable_digests=frozenset({rhel8_kek})))
    assert evaluate(policy, vouched(rhel8)) == []
    keylime_kek = hashlib.sha256(keylime.variables["KEK"].data).hexdigest()
    assert rhel8_kek != keylime_kek
    [finding] = evaluate(policy, vouched(keylime))
    assert finding.check is Check.KEY_EXCHANGE_KEY and keylime_kek in finding.message


# --- dbx ------------------------------------------------------------------------------------------


def test_dbx_older_than_policy_names_missing_revocations(testdata: Path) -> None:
    _, summary = _load(testdata, RHEL8)
    required = _dbx_update_entries(testdata / "go-tpm-tools/secure-boot/dbxupdate_x64-2021-04-29.bin")
    assert len(required) == 211
    measured = _entry_ids(summary.variables["dbx"].signatures)
    missing = required - measured
    assert missing, "the 2021 dbx update must hold revocations the rhel8 log's dbx lacks"
    findings = evaluate(Policy(dbx_required_entries=frozenset(required)), vouched(summary))
    assert [(f.check, f.component, f.pcr) for f in findings] == [(Check.FORBIDDEN_DB, "dbx", 7)]
    assert findings[0].event_index == summary.variables["dbx"].event.index
    assert f"{len(missing)} required revocation(s) missing" in findings[0].message
    for entry in missing:
        assert entry in findings[0].message
    for entry in required & measured:
        assert entry not in findings[0].message


def test_dbx_with_all_required_entries_passes(testdata: Path) -> None:
    _, summary = _load(testdata, RHEL8)
    measured = frozenset(_entry_ids(summary.variables["dbx"].signatures))
    assert evaluate(Policy(dbx_required_entries=measured), vouched(summary)) == []


def test_old_dbx_update_entries_certificates_are_fingerprinted(testdata: Path) -> None:
    entries = _dbx_update_entries(testdata / "go-tpm-tools/secure-boot/dbxupdate_x64-2020-10-12.bin")
    assert _fingerprint(testdata / "go-tpm-tools/secure-boot/canonical-boothole.crt") in entries


# --- boot applications -----------------------------------------------------------------------------


def test_boot_apps_of_another_image_are_each_named(testdata: Path) -> None:
    _, rhel8 = _load(testdata, RHEL8)
    keylime_log, keylime = _load(testdata, KEYLIME_SB)
    policy = Policy(boot_applications=policy_from_summary(rhel8).boot_applications)
    findings = evaluate(policy, vouched(keylime))
    assert [(f.check, f.component, f.pcr, f.event_index) for f in findings] == [
        (Check.BOOT_APPLICATION, "shim", 4, index)
        if position == 0
        else (Check.BOOT_APPLICATION, ("grub", "kernel")[position - 1], 4, index)
        for position, index in enumerate(_app_event_indexes(keylime_log))
    ]
    grub = findings[1]
    assert grub.event_index is not None
    grub_digest = keylime_log.events[grub.event_index].digests["sha256"].hex()
    assert grub.message.startswith("grubx64.efi (")
    assert f"digest {grub_digest} is not in the pool's image policy for grub" in grub.message


def test_extra_and_missing_boot_apps(testdata: Path) -> None:
    shim_log, ovmf = _load(testdata, OVMF_SHIM)
    full = policy_from_summary(ovmf)
    assert full.boot_applications is not None
    indexes = _app_event_indexes(shim_log)
    shortened = Policy(boot_applications=full.boot_applications[:2])
    findings = evaluate(shortened, vouched(ovmf))
    assert [f.event_index for f in findings] == indexes[2:]
    assert all(f.check is Check.BOOT_APPLICATION and f.component == "kernel" for f in findings)
    assert "policy allows only 2 (shim -> grub)" in findings[0].message
    extended = Policy(boot_applications=(*full.boot_applications, BootStep("driver", frozenset({"ab" * 32}))))
    [missing] = evaluate(extended, vouched(ovmf))
    assert missing.component == "driver" and missing.event_index is None and missing.pcr == 4
    assert f"boot application #{len(indexes) + 1}" in missing.message


# --- kernel command line ---------------------------------------------------------------------------


def test_forbidden_cmdline_token_on_real_cos_cmdline(testdata: Path) -> None:
    _, summary = _load(testdata, COS101)
    assert summary.kernel_cmdline is not None
    assert "init=/usr/lib/systemd/systemd" in cmdline_tokens(summary.kernel_cmdline)
    policy = Policy(kernel_cmdline=CmdlineRules(forbidden_tokens=("init=", "module.sig_enforce=0")))
    [finding] = evaluate(policy, vouched(summary))
    assert finding.check is Check.KERNEL_CMDLINE and finding.component == "kernel" and finding.pcr == 8
    assert "init=/usr/lib/systemd/systemd" in finding.message and "module.sig_enforce" not in finding.message
    if summary.kernel_cmdline_event is not None:
        assert finding.event_index == summary.kernel_cmdline_event.index


def test_required_token_and_exact_mismatch(testdata: Path) -> None:
    _, ubuntu = _load(testdata, UBUNTU_NO_SB)
    _, rhel9 = _load(testdata, KEYLIME_SB)
    assert ubuntu.kernel_cmdline and rhel9.kernel_cmdline
    policy = Policy(
        kernel_cmdline=CmdlineRules(exact=rhel9.kernel_cmdline, required_tokens=("ro", "lockdown=integrity"))
    )
    findings = evaluate(policy, vouched(ubuntu))
    assert [f.check for f in findings] == [Check.KERNEL_CMDLINE, Check.KERNEL_CMDLINE]
    assert (
        repr(ubuntu.kernel_cmdline) in findings[0].message
        and "differs from the policy's exact" in findings[0].message
    )
    assert findings[1].message == "kernel command line lacks required token(s) lockdown=integrity"
    assert evaluate(Policy(kernel_cmdline=CmdlineRules(exact=rhel9.kernel_cmdline)), vouched(rhel9)) == []


def test_cmdline_tokens_keep_quoted_values_together() -> None:
    assert cmdline_tokens('root=/dev/sda1 ro dyndbg="file x.c +p" quiet') == [
        "root=/dev/sda1",
        "ro",
        'dyndbg="file x.c +p"',
        "quiet",
    ]


def test_invalid_separator(testdata: Path) -> None:
    _, summary = _load(testdata, RHEL8)
    broken = dataclasses.replace(summary, separators_ok=False)
    [finding] = evaluate(Policy(), vouched(broken))
    assert finding.check is Check.SEPARATOR
    assert evaluate(Policy(require_valid_separators=False), vouched(broken)) == []


def test_all_policy_failures_are_reported_together(testdata: Path) -> None:
    _, rhel8 = _load(testdata, RHEL8)
    _, cos = _load(testdata, COS101)
    policy = dataclasses.replace(
        policy_from_summary(rhel8), kernel_cmdline=CmdlineRules(forbidden_tokens=("init=",))
    )
    checks = {f.check for f in evaluate(policy, vouched(cos))}
    assert {Check.BOOT_APPLICATION, Check.KERNEL_CMDLINE} <= checks


# --- policy documents ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"secureBoot": "yes"}, r"field 'secureBoot': expected true, false or null"),
        ({"secureboot": True}, r"field '\(top level\)': unknown field\(s\) secureboot"),
        ({"version": 2}, r"unsupported policy version 2"),
        ({"db": {"allowedEntries": ["xyz"]}}, r"field 'db.allowedEntries\[0\]': expected 64 hex digits"),
        ({"db": {}}, r"field 'db': needs variableDigests or allowedEntries"),
        ({"dbx": {"requiredEntries": "ab"}}, r"field 'dbx.requiredEntries': expected a list"),
        ({"bootApplications": [{"component": "shim"}]}, r"'bootApplications\[0\]': missing required field"),
        ({"bootApplications": [{"component": "shim", "digests": []}]}, r"at least one allowed digest"),
        ({"kernelCmdline": {"forbiddenTokens": [""]}}, r"'kernelCmdline.forbiddenTokens': expected a list"),
        ({"requireValidSeparators": 1}, r"field 'requireValidSeparators'"),
        ([], r"field '\(top level\)': expected an object, got list"),
    ],
)
def test_bad_policy_documents_name_the_field(document: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(document))
    with pytest.raises(PolicyError, match=message) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PolicyError, match="not a valid JSON document"):
        load_policy(tmp_path / "bad.json")


def test_hex_is_case_insensitive_and_describe_summarises(testdata: Path) -> None:
    digest = "AB" * 32
    policy = Policy.from_dict(
        {"bootApplications": [{"component": "shim", "digests": [digest]}], "secureBoot": True}
    )
    assert policy.boot_applications == (BootStep("shim", frozenset({digest.lower()})),)
    description = policy.describe()
    assert description["secureBoot"] == "must be enabled"
    assert description["bootChain"] == ["shim (1 digest(s))"]
    assert description["pk"] == "any PK"
    json.dumps(description)


def test_sha1_only_log_cannot_seed_a_boot_application_policy(testdata: Path) -> None:
    log, summary = _load(testdata, "go-tpm-tools/eventlogs/debian-10.bin")
    assert log.banks == ("sha1",)
    with pytest.raises(PolicyError, match=r"event #\d+ .* has no SHA-256 digest \(SHA-1-only log\)"):
        policy_from_summary(summary)
    finding, *extra = evaluate(
        Policy(boot_applications=(BootStep("shim", frozenset({"ab" * 32})),)), vouched(summary)
    )
    assert len(extra) == len(summary.boot_apps) - 1
    assert finding.check is Check.BOOT_APPLICATION
    assert "has no SHA-256 digest in the log (banks: sha1)" in finding.message


@pytest.mark.parametrize("golden", [5, None, "ab", [["4", "ab" * 32]]])
def test_a_golden_bank_that_is_not_an_object_is_named(golden: object) -> None:
    """Such a bank was a TypeError out of the hand-written reader (a 500 for the verifier API)."""
    with pytest.raises(PolicyError, match=r"field 'pcrs\.sha256': expected an object, got "):
        Policy.from_json(json.dumps({"pcrs": {"sha256": golden}}))
