"""Fuzz targets shared by the atheris harnesses (fuzz/fuzz_<target>.py) and the hypothesis tests (tests/fuzz).

Each target feeds arbitrary bytes to one of our parsers (and what runs on its output, e.g. replay and
summary after the event-log parser). The only exceptions a target may raise are the parser module's own
TrustedLaunchError subclasses, listed in `expected`: anything else (IndexError, RecursionError,
UnicodeDecodeError, a hang...) is a crash that the parser must turn into a clear operator error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trustedlaunch.attest.evidence import Evidence, EvidenceError
from trustedlaunch.attest.gce import GceFormatError, parse_gce_attestation
from trustedlaunch.attest.machine_state import event_data_findings
from trustedlaunch.attest.policy import Policy, PolicyError
from trustedlaunch.attest.verifier import verify
from trustedlaunch.eventlog.model import EventLogError
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.tpm.structures import (
    TpmStructureError,
    parse_pcr_selection_list,
    parse_tpm2b_public,
    parse_tpms_attest,
    parse_tpmt_public,
    parse_tpmt_signature,
)
from trustedlaunch.uefi.authenticode import PeImageError, load_pe_image
from trustedlaunch.uefi.sbat import SbatError, parse_sbat_level, parse_sbat_section, parse_sbatlevel_section
from trustedlaunch.uefi.shim import read_shim_trust
from trustedlaunch.uefi.siglist import SignatureListError, certificates, parse_signature_lists
from trustedlaunch.uefi.varstore import VarStoreError, read_varstore

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"


@dataclass(frozen=True)
class Target:
    """One fuzz target: a function of bytes and the only exceptions it may raise."""

    name: str
    run: Callable[[bytes], object]
    expected: tuple[type[Exception], ...]
    max_len: int  # largest input the fuzzer generates (libFuzzer -max_len)

    def check(self, data: bytes) -> None:
        """Run the target; an expected (operator) error is a correct rejection, anything else propagates."""
        try:
            self.run(data)
        except self.expected:
            return

    @property
    def corpus(self) -> Path:
        return CORPUS_DIR / self.name


@contextlib.contextmanager
def _as_file(data: bytes, suffix: str) -> Iterator[Path]:
    """The input as a file (in /dev/shm when available) for the readers that take a path; deleted after."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.NamedTemporaryFile(prefix="tl-fuzz-", suffix=suffix, dir=base) as handle:
        handle.write(data)
        handle.flush()
        yield Path(handle.name)


def _eventlog(data: bytes) -> None:
    log = parse_event_log(data)
    replay(log)
    event_data_findings(log)
    summarize(log)


# The first input byte picks the structure (mod 5); the rest is the structure's bytes.
TPM_PARSERS: tuple[Callable[[bytes], object], ...] = (
    parse_tpms_attest,
    parse_tpmt_public,
    parse_tpm2b_public,
    parse_tpmt_signature,
    parse_pcr_selection_list,
)


def _tpm(data: bytes) -> None:
    if not data:
        return
    parsed = TPM_PARSERS[data[0] % len(TPM_PARSERS)](data[1:])
    name = getattr(parsed, "name", None)
    if callable(name):  # a public area: its name and key are derived from the parsed fields
        name()
        parsed.public_key()  # type: ignore[attr-defined]


def _pe(data: bytes) -> None:
    with _as_file(data, ".efi") as path:
        image = load_pe_image(path)
    if ".vendor_cert" in image.sections:
        read_shim_trust(image)
    if ".sbat" in image.sections:
        parse_sbat_section(image.sections[".sbat"], "fuzz .sbat")


def _siglist(data: bytes) -> None:
    certificates(parse_signature_lists(data, "fuzz"))


# The first input byte picks the SBAT parser (mod 3).
def _sbat(data: bytes) -> None:
    if not data:
        return
    kind, body = data[0] % 3, data[1:]
    if kind == 0:
        parse_sbat_section(body, "fuzz")
    elif kind == 1:
        parse_sbat_level(body, "fuzz")
    else:
        parse_sbatlevel_section(body, "fuzz")


def _varstore(data: bytes) -> None:
    with _as_file(data, ".fd") as path:
        read_varstore(path)


# The verifier target: a real swtpm quote of qemu-ovmf/sb_evlog.bin (fuzz/corpus/evidence), verified with
# the input as its event log against the policy derived from that log. verify() never raises: every
# problem must become a finding, so no exception at all is expected.
VERIFIER_EVIDENCE = "seed-sb_evlog.json"
VERIFIER_NONCE = b"\x0b\xad"  # the nonce make_corpus.py quoted over


@functools.cache
def _verifier_inputs() -> tuple[Evidence, Policy]:
    evidence = Evidence.from_json((CORPUS_DIR / "evidence" / VERIFIER_EVIDENCE).read_bytes())
    return evidence, Policy.from_json((CORPUS_DIR / "policy" / VERIFIER_EVIDENCE).read_bytes())


def _verifier(data: bytes) -> None:
    evidence, policy = _verifier_inputs()
    result = verify(dataclasses.replace(evidence, event_log=data), nonce=VERIFIER_NONCE, policy=policy)
    if result.ok == bool(result.findings):
        raise AssertionError(f"verdict ok={result.ok} contradicts its findings {result.findings}")


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("eventlog", _eventlog, (EventLogError,), 96 * 1024),
        Target("tpm", _tpm, (TpmStructureError,), 4096),
        Target("pe", _pe, (PeImageError, SignatureListError, SbatError), 160 * 1024),
        Target("siglist", _siglist, (SignatureListError,), 16 * 1024),
        Target("sbat", _sbat, (SbatError,), 4096),
        Target("varstore", _varstore, (VarStoreError, SignatureListError), 160 * 1024),
        Target("evidence", lambda data: Evidence.from_json(data), (EvidenceError,), 64 * 1024),
        Target("policy", lambda data: Policy.from_json(data), (PolicyError,), 32 * 1024),
        Target("gce", parse_gce_attestation, (GceFormatError,), 48 * 1024),
        Target("verifier", _verifier, (), 64 * 1024),
    )
}
