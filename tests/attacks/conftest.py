"""Fixtures of the attack catalogue: two vTPM nodes (real swtpm, EKs certified by swtpm_setup with our
platform CA or with a foreign CA of the same name) replaying a real firmware log, and the ESP builders of
tests/uefi (esp_helpers.py, put on sys.path here)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "uefi"))

from swtpm_agent import Lab, SwtpmAgent

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import extend_event_log
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.eventlog.types import EV_NO_ACTION
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca
from trustedlaunch.tpm.swtpm import Swtpm
from trustedlaunch.tpm.vtpm import Vtpm

RHEL8 = "go-tpm-tools/eventlogs/rhel8-uefi.bin"  # GCE RHEL 8, Secure Boot on


def _node(base: Path, name: str, ca: EkCa, raw_log: bytes, selection: str) -> Iterator[SwtpmAgent]:
    vtpm = Vtpm.create(base / name, ek_ca=ca, pcr_banks=("sha1", "sha256"))
    certificate = next(p for p in vtpm.ek_certificates() if "rsa" in p.name).read_bytes()
    with Swtpm(state_dir=vtpm.state_dir) as tpm:
        extend_event_log(tpm, parse_event_log(raw_log))
        yield SwtpmAgent(tpm, base / f"{name}-work", certificate, raw_log, selection)


@pytest.fixture(scope="module")
def lab(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("attacks")
    platform = create_ek_ca(base / "ca")
    foreign = create_ek_ca(base / "foreign", common_name=platform.certificate.subject.rfc4514_string()[3:])
    raw_log = (testdata / RHEL8).read_bytes()
    log = parse_event_log(raw_log)
    pcrs = tuple(sorted({event.pcr for event in log.events if event.event_type != EV_NO_ACTION}))
    selection = f"sha256:{','.join(map(str, pcrs))}"
    policy = policy_from_summary(summarize(log))
    for node in _node(base, "node", platform, raw_log, selection):
        for other in _node(base, "other", foreign, raw_log, selection):
            yield Lab(platform, foreign, raw_log, policy, pcrs, node, other)
