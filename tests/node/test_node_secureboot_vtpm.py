"""A Secure Boot + vTPM node boots through shim/GRUB/kernel; its agent's quote verifies against its log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from trustedlaunch.attest.quote import verify_quote
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.node.agent_client import NodeQuote
from trustedlaunch.node.channel import AgentError
from trustedlaunch.node.image import DEFAULT_CMDLINE
from trustedlaunch.node.qemu import NodeVM
from trustedlaunch.tpm.credential import check_ak_attributes, make_credential, new_activation_secret
from trustedlaunch.tpm.node_tpm import NodeTpmError
from trustedlaunch.tpm.structures import parse_tpm2b_public
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow
NONCE = bytes.fromhex("5ec0b007c0ffee0123456789abcdef00")
QUOTED_PCRS = {*range(10), 14}


@pytest.fixture(scope="module")
def node(secure_node: NodeVM) -> NodeVM:
    return secure_node


@pytest.fixture(scope="module")
def quote(node: NodeVM) -> NodeQuote:
    return node.request_quote(NONCE)


def checkquote(quote: NodeQuote, folder: Path) -> subprocess.CompletedProcess[str]:
    """Verify the quote with the real tpm2_checkquote (signature and nonce)."""
    for name in ("ak_public", "quote", "signature"):
        (folder / name).write_bytes(getattr(quote, name))
    return subprocess.run(
        [
            *("tpm2_checkquote", "-u", "ak_public", "-m", "quote", "-s", "signature"),
            *("-g", "sha256", "-q", quote.nonce.hex()),
        ],
        cwd=folder,
        capture_output=True,
        text=True,
    )


def test_agent_is_ready_and_announced_on_the_console(node: NodeVM) -> None:
    assert node.ready_after is not None
    assert "trustedlaunch-agent ready (TPM present)" in node.console_log.read_text(errors="replace")


def test_quote_verifies_with_tpm2_checkquote(quote: NodeQuote, tmp_path: Path) -> None:
    result = checkquote(quote, tmp_path)
    assert result.returncode == 0, result.stderr


def test_checkquote_rejects_another_nonce(quote: NodeQuote, tmp_path: Path) -> None:
    forged = NodeQuote(**{**quote.__dict__, "nonce": bytes(16)})
    assert checkquote(forged, tmp_path).returncode != 0


def test_event_log_replays_to_the_quoted_pcrs(quote: NodeQuote) -> None:
    assert quote.event_log is not None
    replayed = replay(parse_event_log(quote.event_log))
    assert "sha256" in quote.pcr_values
    for bank, values in quote.pcr_values.items():
        assert set(values) == QUOTED_PCRS
        for pcr, value in replayed[bank].items():
            assert values[pcr] == value, f"{bank} PCR{pcr}"
    assert set(replayed["sha256"]) == QUOTED_PCRS  # shim measures MokList, MokListX... into PCR14


def test_quote_verifies_against_the_replayed_log(quote: NodeQuote) -> None:
    assert quote.event_log is not None
    replayed = replay(parse_event_log(quote.event_log))
    verified = verify_quote(
        parse_tpm2b_public(quote.ak_public), quote.quote, quote.signature, nonce=NONCE, pcr_values=replayed
    )
    assert set(verified.selected["sha256"]) == QUOTED_PCRS


def test_event_log_says_secure_boot_on(quote: NodeQuote) -> None:
    assert quote.event_log is not None
    summary = summarize(parse_event_log(quote.event_log))
    assert summary.secure_boot is True
    # GRUB measures the command after its own unescaping: `initrd=\initrd.gz` arrives as `initrd=initrd.gz`.
    chainloaded = f"chainloader /vmlinuz initrd=initrd.gz {DEFAULT_CMDLINE}"
    assert chainloaded in summary.grub_commands
    assert "loopback initramfs /initrd.gz" in summary.grub_commands  # GRUB reads (measures) the initramfs


def test_ek_is_the_certified_ek_of_the_vtpm(quote: NodeQuote, node_vtpm: Vtpm) -> None:
    ek = parse_tpm2b_public(quote.ek_public).public_key()
    certified = [
        x509.load_der_x509_certificate(path.read_bytes()).public_key() for path in node_vtpm.ek_certificates()
    ]
    rsa_keys = [key for key in certified if isinstance(key, rsa.RSAPublicKey)]
    assert isinstance(ek, rsa.RSAPublicKey) and rsa_keys
    assert ek.public_numbers() == rsa_keys[0].public_numbers()


def test_activate_credential_returns_the_secret(node: NodeVM, quote: NodeQuote) -> None:
    secret = new_activation_secret()
    challenge = make_credential(parse_tpm2b_public(quote.ek_public), quote.ak_name, secret)
    assert node.activate(challenge.credential_blob, challenge.encrypted_secret) == secret


def test_activate_for_another_ak_fails(node: NodeVM, quote: NodeQuote) -> None:
    wrong_name = quote.ak_name[:2] + bytes(len(quote.ak_name) - 2)
    challenge = make_credential(parse_tpm2b_public(quote.ek_public), wrong_name, new_activation_secret())
    with pytest.raises(NodeTpmError, match="TPM2_ActivateCredential failed"):
        node.activate(challenge.credential_blob, challenge.encrypted_secret)


def test_nonce_too_long_is_rejected(node: NodeVM) -> None:
    with pytest.raises(AgentError, match="nonce"):
        node.request_quote(bytes(65))


def test_ak_is_persisted_and_the_next_quote_uses_it(node: NodeVM, quote: NodeQuote) -> None:
    again = node.request_quote(NONCE[::-1])
    assert again.ak_name == quote.ak_name
    check_ak_attributes(parse_tpm2b_public(again.ak_public))


def test_relay_refuses_commands_attestation_does_not_need(node: NodeVM) -> None:
    # TPM2_PCR_Extend(PCR 7, no digests): would change a measured PCR if the agent passed it
    extend = bytes.fromhex("8002000000170000018200000007000000090000000100000000000000")
    extend = extend[:2] + len(extend).to_bytes(4, "big") + extend[6:]
    with pytest.raises(AgentError, match="command code 0x00000182 is not relayed"):
        node.agent().channel.tpm_command(extend, 30)
    # TPM2_EvictControl(owner, the EK at 0x81010001, password session): would delete the EK
    evict_ek = bytes.fromhex("800200000023000001204000000181010001000000094000000900000000008101" + "0001")
    with pytest.raises(AgentError, match="EvictControl is relayed only to persist a transient key"):
        node.agent().channel.tpm_command(evict_ek, 30)
    answer = node.agent().channel.request("TPM", "TPM", 30, argument="%s%n")  # printf directives, not bytes
    assert "not written as bytes" in answer["error"]
    # the relay still works after refusing
    assert node.request_quote(NONCE).ak_name
