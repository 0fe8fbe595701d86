"""A real TPM behind the AgentLike protocol of trustedlaunch.attest.remote, no VM needed: quotes and
credential activation done with tpm2-tools against a running swtpm (an RSA AK; real nodes make an ECC
one through trustedlaunch.tpm.node_tpm, and the verifier takes both).

`SwtpmAgent` is an honest node; the small wrappers below are the attacker's agent (replaying a quote,
relaying another TPM's quote, editing the event log) around honest agents.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from trustedlaunch.attest.evidence import parse_pcrread_output
from trustedlaunch.attest.policy import Policy
from trustedlaunch.tpm.credential import CredentialChallenge
from trustedlaunch.tpm.ekca import EkCa
from trustedlaunch.tpm.swtpm import Swtpm


@dataclass(frozen=True)
class SwtpmQuote:
    """What the node agent returns for a quote request (the shape of trustedlaunch.node.channel.NodeQuote)."""

    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes
    ek_public: bytes  # TPM2B_PUBLIC of the RSA EK
    quote: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE
    pcr_values: dict[str, dict[int, bytes]]
    event_log: bytes | None


class SwtpmAgent:
    """An honest node agent over a real swtpm: RSA EK (certified by the vTPM's platform CA) and a
    restricted RSA AK made as the in-guest agent makes them, quotes of `selection` over the nonce."""

    def __init__(self, tpm: Swtpm, work: Path, ek_certificate: bytes, event_log: bytes, selection: str):
        self.tpm, self.work, self.event_log, self.selection = tpm, work, event_log, selection
        self._ek_certificate = ek_certificate
        work.mkdir(parents=True, exist_ok=True)
        tpm.run(["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"], cwd=work)
        tpm.flush_transient_objects()
        create_ak = ["tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256"]
        tpm.run([*create_ak, "-s", "rsassa", "-u", "ak.pub", "-n", "ak.name"], cwd=work)
        tpm.flush_transient_objects()

    def with_selection(self, selection: str) -> SwtpmAgent:
        """The same node (same TPM, keys and log) quoting another PCR selection."""
        other = object.__new__(SwtpmAgent)
        other.__dict__.update(self.__dict__)
        other.selection = selection
        return other

    def request_quote(self, nonce: bytes) -> SwtpmQuote:
        quote = ["tpm2_quote", "-c", "ak.ctx", "-l", self.selection, "-q", nonce.hex(), "-g", "sha256"]
        try:
            self.tpm.run([*quote, "-m", "quote.msg", "-s", "quote.sig"], cwd=self.work)
        finally:
            self.tpm.flush_transient_objects()
        read = "+".join(dict.fromkeys(self.selection.split("+")))  # each selection once
        values = parse_pcrread_output(self.tpm.run(["tpm2_pcrread", read], cwd=self.work).stdout.decode())
        files = {name: (self.work / name).read_bytes() for name in ("ak.pub", "ak.name", "ek.pub")}
        return SwtpmQuote(
            ak_public=files["ak.pub"],
            ak_name=files["ak.name"],
            ek_public=files["ek.pub"],
            quote=(self.work / "quote.msg").read_bytes(),
            signature=(self.work / "quote.sig").read_bytes(),
            pcr_values=values,
            event_log=self.event_log,
        )

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        (self.work / "cred.bin").write_bytes(
            CredentialChallenge(credential_blob, encrypted_secret).to_tpm2_tools()
        )
        secret = self.work / "secret.bin"
        secret.unlink(missing_ok=True)
        session = self.work / "session.ctx"
        self.tpm.run(["tpm2_startauthsession", "--policy-session", "-S", session])
        try:
            self.tpm.run(["tpm2_policysecret", "-S", session, "-c", "e"])
            activate = ["tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-P", f"session:{session}"]
            self.tpm.run([*activate, "-i", "cred.bin", "-o", secret], cwd=self.work)
        finally:
            self.tpm.flush_transient_objects()
        return secret.read_bytes()

    def ek_certificate(self) -> bytes:
        return self._ek_certificate


@dataclass
class ReplayingAgent:
    """Answers every quote request with the first quote it got from the node (stale nonce)."""

    node: SwtpmAgent
    recorded: SwtpmQuote | None = None

    def request_quote(self, nonce: bytes) -> SwtpmQuote:
        if self.recorded is None:
            self.recorded = self.node.request_quote(nonce)
        return self.recorded

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        return self.node.activate(credential_blob, encrypted_secret)

    def ek_certificate(self) -> bytes:
        return self.node.ek_certificate()


@dataclass
class RelayingAgent:
    """A man in the middle: quotes come from another TPM (optionally presented with the real node's EK),
    credential activation and the EK certificate from the real node."""

    node: SwtpmAgent
    quoting_node: SwtpmAgent
    claim_node_ek: bool = False

    def request_quote(self, nonce: bytes) -> SwtpmQuote:
        quote = self.quoting_node.request_quote(nonce)
        if self.claim_node_ek:
            quote = dataclasses.replace(quote, ek_public=(self.node.work / "ek.pub").read_bytes())
        return quote

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        return self.node.activate(credential_blob, encrypted_secret)

    def ek_certificate(self) -> bytes:
        return self.node.ek_certificate()


@dataclass
class LogEditingAgent:
    """The node's real quote, sent with an edited event log."""

    node: SwtpmAgent
    event_log: bytes

    def request_quote(self, nonce: bytes) -> SwtpmQuote:
        return dataclasses.replace(self.node.request_quote(nonce), event_log=self.event_log)

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        return self.node.activate(credential_blob, encrypted_secret)

    def ek_certificate(self) -> bytes:
        return self.node.ek_certificate()


@dataclass(frozen=True)
class Lab:
    platform_ca: EkCa
    foreign_ca: EkCa  # another CA with the platform CA's name
    event_log: bytes
    policy: Policy  # derived from the same log: an honest node passes it
    pcrs: tuple[int, ...]  # every PCR the log extends
    node: SwtpmAgent  # EK certified by the platform CA
    other: SwtpmAgent  # another vTPM, EK certified by the foreign CA

    def selection(self, bank: str = "sha256") -> str:
        return f"{bank}:{','.join(map(str, self.pcrs))}"
