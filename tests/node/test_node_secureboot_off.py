"""Secure Boot off + vTPM: the same chain boots (GRUB chainloads the kernel EFI stub); the log says so."""

from __future__ import annotations

import os
import signal

import pytest
from cryptography import x509
from node_helpers import processes_under

from trustedlaunch.attest.quote import verify_quote
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.node.agent_client import NodeQuote
from trustedlaunch.node.qemu import NodeVM
from trustedlaunch.tpm.structures import parse_tpm2b_public
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow
NONCE = bytes.fromhex("0ff0ff")


@pytest.fixture(scope="module")
def node(insecure_node: NodeVM) -> NodeVM:
    return insecure_node


@pytest.fixture(scope="module")
def quote(node: NodeVM) -> NodeQuote:
    return node.request_quote(NONCE)


def test_event_log_says_secure_boot_off(quote: NodeQuote) -> None:
    assert quote.event_log is not None
    assert summarize(parse_event_log(quote.event_log)).secure_boot is False


def test_quote_verifies_against_the_replayed_log(quote: NodeQuote) -> None:
    assert quote.event_log is not None
    replayed = replay(parse_event_log(quote.event_log))
    verify_quote(
        parse_tpm2b_public(quote.ak_public), quote.quote, quote.signature, nonce=NONCE, pcr_values=replayed
    )


def test_ek_is_the_certified_ek_of_its_own_vtpm(quote: NodeQuote, other_vtpm: Vtpm) -> None:
    certified = {
        x509.load_der_x509_certificate(path.read_bytes()).public_key().public_numbers()
        for path in other_vtpm.ek_certificates()
    }
    assert parse_tpm2b_public(quote.ek_public).public_key().public_numbers() in certified


@pytest.mark.kills_shared_node
def test_swtpm_is_reaped_when_qemu_dies(node: NodeVM, quote: NodeQuote, other_vtpm: Vtpm) -> None:
    """QEMU is killed behind the driver's back; shutdown still reaps both (runs after its other users)."""
    assert node.pid is not None and other_vtpm.running
    os.kill(node.pid, signal.SIGKILL)
    node.shutdown()
    assert not node.running and not other_vtpm.running
    assert not processes_under(node.run_dir)
