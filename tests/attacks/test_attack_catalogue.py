"""The attack catalogue: one test per attack, each rejected with its named reason, none crashing the verifier.

Boot-chain attacks run the real Secure Boot decision (`decide_boot`) on the real Debian shim, GRUB and
kernel, edited with sbsign/sbattach/virt-firmware (tests/uefi/esp_helpers.py). Attestation attacks run
`attest_node` (enrollment by EK certificate + credential activation, quote, verifier) against real
swtpm vTPMs whose PCRs hold a real GCE firmware log (swtpm_agent.py). Each attestation attack asserts its
Finding (check, component, PCR, event) and the integrity alert raised from the result (one alert carrying
that finding, its severity and the failed component); boot-chain attacks assert the component and reason
that stops the boot.
"""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path

import pytest
from esp_helpers import (
    GRUB,
    OVMF_VARS_KEYLESS,
    OVMF_VARS_MS,
    SHIM,
    build_esp,
    debian_kernel,
    flip_byte_in_section,
    make_self_signed,
    sign_with,
    strip_signatures,
    write_varstore,
)
from swtpm_agent import Lab, LogEditingAgent, RelayingAgent, ReplayingAgent

from trustedlaunch.attest.alerts import alerts_from_result, finding_severity
from trustedlaunch.attest.evidence import MAX_EVENT_LOG_SIZE, collect_evidence, extend_event_log
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.remote import AgentLike, NodeAttestation, NodeState, attest_node
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.eventlog.model import EventLogError
from trustedlaunch.eventlog.parser import MAX_EVENTS, parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.types import EV_NO_ACTION
from trustedlaunch.findings import Check, Finding
from trustedlaunch.tpm.swtpm import Swtpm
from trustedlaunch.uefi.authenticode import ReasonCode, load_pe_image
from trustedlaunch.uefi.sbat import parse_sbat_section
from trustedlaunch.uefi.secureboot import BootDecision, decide_boot

SB_OFF_LOG = "go-tpm-tools/eventlogs/ubuntu-2104-no-secure-boot.bin"  # GCE Ubuntu 21.04, Secure Boot off
COMPONENTS = ("shim", "grub", "kernel")
# a section in the middle of each image's signed content
TAMPERED_SECTION = {"shim": b".text", "grub": b"mods", "kernel": b".text"}


# --- boot chain (offline Secure Boot decision, as OVMF + shim + GRUB decide) ---------------------------


def _source(component: str) -> Path:
    return {"shim": SHIM, "grub": GRUB, "kernel": debian_kernel()}[component]


def _esp_with(tmp_path: Path, component: str, image: Path) -> Path:
    return build_esp(tmp_path / "esp", **{component: image})


def _refused(decision: BootDecision, component: str, reason: ReasonCode) -> None:
    """The boot stops at `component` for `reason`, and every component before it was accepted."""
    failure = decision.failure
    assert failure is not None and not decision.boots, decision.summary
    assert (failure.name, failure.reason) == (component, reason), failure.message
    assert failure.message.startswith(f"{component} (")
    before = decision.components[: COMPONENTS.index(component)]
    assert all(c.accepted for c in before)


@pytest.mark.parametrize("component", COMPONENTS)
def test_unsigned_component_is_refused(tmp_path: Path, component: str) -> None:
    image = strip_signatures(_source(component), tmp_path / f"{component}.unsigned")
    decision = decide_boot(OVMF_VARS_MS, _esp_with(tmp_path, component, image))
    _refused(decision, component, ReasonCode.NOT_SIGNED)


@pytest.mark.parametrize("component", COMPONENTS)
def test_tampered_component_is_refused(tmp_path: Path, component: str) -> None:
    image = tmp_path / f"{component}.tampered"
    image.write_bytes(_source(component).read_bytes())
    flip_byte_in_section(image, TAMPERED_SECTION[component])
    decision = decide_boot(OVMF_VARS_MS, _esp_with(tmp_path, component, image))
    _refused(decision, component, ReasonCode.DIGEST_MISMATCH)
    assert decision.failure is not None and "modified after signing" in decision.failure.message


@pytest.mark.parametrize("component", COMPONENTS)
def test_self_signed_component_is_refused(tmp_path: Path, component: str) -> None:
    signer = make_self_signed(tmp_path / "keys", f"attacker {component} key")
    image = sign_with(signer, _source(component), tmp_path / f"{component}.self-signed")
    decision = decide_boot(OVMF_VARS_MS, _esp_with(tmp_path, component, image))
    _refused(decision, component, ReasonCode.SIGNER_NOT_TRUSTED)
    assert decision.failure is not None and f"attacker {component} key" in decision.failure.detail


@pytest.mark.parametrize("component", COMPONENTS)
def test_dbx_revoked_component_is_refused(tmp_path: Path, component: str) -> None:
    digest = load_pe_image(_source(component)).sha256
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", dbx_hashes=(digest,))
    decision = decide_boot(varstore, build_esp(tmp_path / "esp"))
    _refused(decision, component, ReasonCode.REVOKED_BY_HASH)
    assert decision.failure is not None and digest.hex() in decision.failure.detail


def test_sbat_revoked_grub_is_refused(tmp_path: Path) -> None:
    sbat = parse_sbat_section(load_pe_image(GRUB).sections[".sbat"], "grub")
    generation = next(entry.generation for entry in sbat if entry.component == "grub")
    level = f"sbat,1,2099010100\ngrub,{generation + 1}\n"
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", sbat_level=level)
    decision = decide_boot(varstore, build_esp(tmp_path / "esp"))
    _refused(decision, "grub", ReasonCode.SBAT_REVOKED)
    assert decision.failure is not None
    assert f"grub generation {generation} < required {generation + 1}" in decision.failure.detail


# --- attestation (real swtpm vTPMs, attest_node end to end) ---------------------------------------------


def _attest(lab: Lab, agent: AgentLike, node_state: NodeState | None = None) -> NodeAttestation:
    return attest_node(agent, policy=lab.policy, ek_ca=[lab.platform_ca.certificate], node_state=node_state)


def _alerted(result: AttestationResult) -> Finding:
    """The one finding of a rejected attestation, after checking the integrity alert raised for it."""
    assert not result.ok
    [finding] = result.findings
    [alert] = alerts_from_result(result, node="node-0", pool="pool", cluster="cluster")
    assert alert.findings == (finding,) and alert.failed_components == [finding.component]
    assert alert.severity is finding_severity(finding)
    document = alert.to_dict()["properties"]
    assert document["alertType"] == "VM_AttestationFailure" and document["compromisedEntity"] == "node-0"
    [evidence] = document["supportingEvidence"]["findings"]
    assert (evidence["check"], evidence["component"], evidence["pcr"], evidence["eventIndex"]) == (
        finding.check.value,
        finding.component,
        finding.pcr,
        finding.event_index,
    )
    return finding


def _only_finding(attestation: NodeAttestation) -> Finding:
    return _alerted(attestation.result)


def test_honest_node_passes(lab: Lab) -> None:
    """The control for every attack below: the same node, keys, log and policy are trusted."""
    attestation = _attest(lab, lab.node)
    assert attestation.ok, attestation.result.findings
    assert alerts_from_result(attestation.result, node="node-0", pool="pool", cluster="cluster") == []
    assert attestation.enrolled and attestation.state.ak_name is not None


def test_secure_boot_off_is_rejected(lab: Lab, testdata: Path, tmp_path: Path) -> None:
    # offline: a varstore without keys enforces nothing, the unsigned kernel would boot
    unsigned = strip_signatures(debian_kernel(), tmp_path / "vmlinuz.unsigned")
    decision = decide_boot(OVMF_VARS_KEYLESS, build_esp(tmp_path / "esp", kernel=unsigned))
    assert decision.boots and not decision.secure_boot
    assert any("no PK is enrolled" in note for note in decision.notes)
    # attested: a node that booted with Secure Boot off, quoted by a real TPM, against a Secure Boot policy
    raw_log = (testdata / SB_OFF_LOG).read_bytes()
    log = parse_event_log(raw_log)
    nonce = hashlib.sha256(b"sb-off").digest()
    pcrs = sorted({event.pcr for event in log.events if event.event_type != EV_NO_ACTION})
    with Swtpm() as tpm:
        extend_event_log(tpm, log)
        evidence = collect_evidence(tpm, raw_log, nonce=nonce, pcrs=pcrs, workdir=tmp_path)
    result = verify(evidence, nonce=nonce, policy=Policy(secure_boot=True))
    finding = _alerted(result)
    assert (finding.check, finding.component, finding.pcr) == (Check.SECURE_BOOT, "firmware", 7)
    assert finding.event_index is not None and "disabled" in finding.message


def test_stale_or_replayed_nonce_is_rejected(lab: Lab) -> None:
    replaying = ReplayingAgent(lab.node)
    first = _attest(lab, replaying)
    assert first.ok  # the recorded quote answered that request's fresh nonce
    again = _attest(lab, replaying, node_state=first.state)
    finding = _only_finding(again)
    assert (finding.check, finding.component) == (Check.NONCE, "quote")
    assert "stale or replayed" in finding.message
    assert again.state == first.state  # the clock is not advanced by a rejected quote


def _edit(raw_log: bytes, old: bytes, new: bytes, within: range) -> bytes:
    at = raw_log.index(old, within.start, within.stop)
    return raw_log[:at] + new + raw_log[at + len(old) :]


def test_event_log_edited_to_match_the_quoted_pcr_is_rejected(lab: Lab) -> None:
    """The attacker wants GRUB's measured kernel command line to read "rw" (a policy allowing only "ro"
    would pass it): edit the text and keep the digests, so the log still replays to the quoted PCR8."""
    log = parse_event_log(lab.event_log)
    [cmdline] = [e for e in log.events if e.pcr == 8 and e.data.startswith(b"grub_kernel_cmdline ")]
    span = range(cmdline.offset, cmdline.offset + 200 + len(cmdline.data))
    edited = _edit(lab.event_log, b" ro ", b" rw ", span)
    quoted_pcr8 = lab.node.request_quote(b"\x00" * 32).pcr_values["sha256"][8]
    assert replay(parse_event_log(edited))["sha256"][8] == quoted_pcr8 == replay(log)["sha256"][8]
    finding = _only_finding(_attest(lab, LogEditingAgent(lab.node, edited)))
    assert (finding.check, finding.component, finding.pcr, finding.event_index) == (
        Check.EVENT_DATA,
        "event log",
        8,
        cmdline.index,
    )
    # ... or make the digest honest for the edited text: then the replay no longer gives the quoted PCR8
    new_text = parse_event_log(edited).events[cmdline.index].data[len(b"grub_kernel_cmdline ") :]
    honest = _edit(edited, cmdline.digests["sha256"], hashlib.sha256(new_text).digest(), span)
    assert replay(parse_event_log(honest))["sha256"][8] != quoted_pcr8
    finding = _only_finding(_attest(lab, LogEditingAgent(lab.node, honest)))
    assert (finding.check, finding.component, finding.pcr) == (Check.PCR_DIGEST, "quote", 8)


def test_quote_from_another_vtpm_is_rejected(lab: Lab) -> None:
    enrolled = _attest(lab, lab.node)
    assert enrolled.ok
    relay = RelayingAgent(lab.node, lab.other)
    finding = _only_finding(_attest(lab, relay, node_state=enrolled.state))
    assert (finding.check, finding.component) == (Check.AK_BINDING, "AK")
    assert "enrolled AK" in finding.message and "another TPM" in finding.message


def test_ak_not_bound_to_the_ek_is_rejected(lab: Lab) -> None:
    """First contact: the node's certified EK is presented with another TPM's AK and quote; the credential
    made for that AK's name under the node's EK cannot be activated by the node's TPM."""
    relay = RelayingAgent(lab.node, lab.other, claim_node_ek=True)
    finding = _only_finding(_attest(lab, relay))
    assert (finding.check, finding.component) == (Check.AK_BINDING, "AK")
    assert "credential activation failed" in finding.message


def test_ek_certificate_from_a_foreign_ca_is_rejected(lab: Lab) -> None:
    assert lab.foreign_ca.certificate.subject == lab.platform_ca.certificate.subject
    attestation = _attest(lab, lab.other)
    finding = _only_finding(attestation)
    assert (finding.check, finding.component) == (Check.EK_CERTIFICATE, "EK")
    assert "not from a trusted EK CA" in finding.message
    assert attestation.state.ak_name is None and not attestation.enrolled


def test_sha1_only_quote_is_rejected(lab: Lab) -> None:
    finding = _only_finding(_attest(lab, lab.node.with_selection(lab.selection("sha1"))))
    assert (finding.check, finding.component) == (Check.PCR_BANK, "quote")
    assert "only the sha1 bank" in finding.message


def test_duplicate_pcr_selections_are_rejected(lab: Lab) -> None:
    # the TPM signs a quote whose selection names the sha256 bank twice; the verifier refuses it
    duplicated = f"{lab.selection()}+{lab.selection()}"
    finding = _only_finding(_attest(lab, lab.node.with_selection(duplicated)))
    assert (finding.check, finding.component) == (Check.PCR_SELECTION, "quote")
    assert "selected more than once" in finding.message


def _many_events_log(header_log: bytes, count: int) -> bytes:
    """A crypto-agile log: the real log's Spec ID header, then `count` empty EV_IPL events in PCR 8."""
    log = parse_event_log(header_log)
    header = log.events[0]
    header_end = log.events[1].offset
    digests = b"".join(
        struct.pack("<H", alg) + bytes(size) for alg, size in ((0x0004, 20), (0x000B, 32), (0x000C, 48))
    )
    assert log.banks == ("sha1", "sha256", "sha384") and header.offset == 0
    event = struct.pack("<III", 8, 0x0000000D, 3) + digests + struct.pack("<I", 0)
    return header_log[:header_end] + event * count


def test_huge_log_is_rejected_quickly(lab: Lab) -> None:
    # over the parser's event cap
    flood = _many_events_log(lab.event_log, MAX_EVENTS + 1)
    started = time.monotonic()
    with pytest.raises(EventLogError, match=f"more than {MAX_EVENTS} events: log rejected"):
        parse_event_log(flood)
    assert time.monotonic() - started < 5.0
    # over the evidence size cap, sent by a node: rejected before any parsing
    huge = lab.event_log + bytes(MAX_EVENT_LOG_SIZE)
    started = time.monotonic()
    finding = _only_finding(_attest(lab, LogEditingAgent(lab.node, huge)))
    assert (finding.check, finding.component) == (Check.EVIDENCE_FORMAT, "evidence")
    assert "'eventLog'" in finding.message and str(MAX_EVENT_LOG_SIZE) in finding.message
    assert time.monotonic() - started < 30.0  # enrollment and quote included


def test_truncated_log_is_rejected(lab: Lab) -> None:
    log = parse_event_log(lab.event_log)
    cut = log.events[20].offset + 30  # inside event #20's digest list
    finding = _only_finding(_attest(lab, LogEditingAgent(lab.node, lab.event_log[:cut])))
    assert (finding.check, finding.component, finding.event_index) == (Check.EVIDENCE_FORMAT, "event log", 20)
    assert "truncated" in finding.message
