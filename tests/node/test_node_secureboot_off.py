"""Secure Boot off + vTPM: the same chain boots (GRUB chainloads the kernel EFI stub); the log says so."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from node_helpers import processes_under

from trustedlaunch.attest.quote import verify_quote
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.node.channel import NodeQuote
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.qemu import NodeVM
from trustedlaunch.tpm.structures import parse_tpm2b_public
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow
NONCE = bytes.fromhex("0ff0ff")


@pytest.fixture(scope="module")
def node(node_image: NodeImage, node_vtpm: Vtpm, node_base: Path) -> Iterator[NodeVM]:
    with NodeVM(node_image, node_base / "vm-nosb-vtpm", secure_boot=False, vtpm=node_vtpm) as vm:
        vm.wait_ready()
        yield vm


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


def test_vtpm_state_survived_the_restart(quote: NodeQuote, node_vtpm: Vtpm) -> None:
    """The vTPM is reused from the Secure Boot run (or made for this one): its EK is the certified one."""
    certified = {
        x509.load_der_x509_certificate(path.read_bytes()).public_key().public_numbers()
        for path in node_vtpm.ek_certificates()
    }
    assert parse_tpm2b_public(quote.ek_public).public_key().public_numbers() in certified


def test_swtpm_is_reaped_when_qemu_dies(
    node: NodeVM, quote: NodeQuote, node_vtpm: Vtpm, node_base: Path
) -> None:
    """Runs last in this module: QEMU is killed behind the driver's back; shutdown still reaps both."""
    assert node.pid is not None and node_vtpm.running
    os.kill(node.pid, signal.SIGKILL)
    node.shutdown()
    assert not node.running and not node_vtpm.running
    assert not processes_under(node_base)
