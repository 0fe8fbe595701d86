"""A node's agent as the verifier uses it (trustedlaunch.attest.remote.AgentLike): quotes, credential
activation and the EK certificate, made by the host's TSS (trustedlaunch.tpm.node_tpm) on the node's TPM
through the agent's TPM relay, plus the event log the agent reads from the kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tpm2_pytss.TCTI import PyTCTI

from trustedlaunch.node.channel import AgentChannel, AgentError
from trustedlaunch.tpm.node_tpm import QUOTED_PCRS, NodeTpm, NodeTpmError

MAX_NONCE_BYTES = 64  # TPM2B_DATA of a quote holds a digest-sized nonce at most (sha512)
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class NodeQuote:
    """A node's answer to a quote request: everything a verifier needs, as the node's TPM made it."""

    nonce: bytes
    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes  # nameAlg || digest of the AK public area
    ek_public: bytes  # TPM2B_PUBLIC of the RSA EK
    quote: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE
    pcr_values: dict[str, dict[int, bytes]]  # bank -> PCR -> value, read after the quote
    event_log: bytes | None  # binary_bios_measurements, None when the kernel exposes none


class AgentTcti(PyTCTI):
    """A TCTI whose TPM is the node's: each command goes through the agent's relay."""

    def __init__(self, channel: AgentChannel, timeout: float):
        super().__init__()
        self._channel, self._timeout = channel, timeout
        self._response = b""
        self.failure: AgentError | None = None  # why the last command did not reach the TPM

    def do_transmit(self, command: bytes) -> None:
        self.failure = None
        try:
            self._response = self._channel.tpm_command(command, self._timeout)
        except AgentError as exc:  # the TSS turns it into a generic TCTI error: keep the agent's words
            self.failure = exc
            raise

    def do_receive(self, timeout: int) -> bytes:
        response, self._response = self._response, b""
        return response


class NodeAgent:
    """The verifier's side of one node's agent, over its serial channel.

    Any failed TPM operation (the agent timed out, answered garbage, the TSS refused) discards the host's
    TSS state for the node: ESAPI is left mid-command by a failure ("Esys called in bad sequence" for every
    later command), so the next operation starts on a fresh ESAPI context and TCTI, first flushing what the
    failed operation's late commands left loaded in the TPM. Late answers to the failed requests are skipped
    by the channel (they carry another request id)."""

    def __init__(self, channel: AgentChannel, timeout: float):
        self.channel, self.timeout = channel, timeout
        self._tcti = AgentTcti(channel, timeout)
        self._tpm: NodeTpm | None = None
        self._interrupted = False  # an operation failed: the TPM may hold what its late commands loaded

    def _discard_tpm(self) -> None:
        """Drop the node's ESAPI context and TCTI; the next TPM operation makes new ones."""
        tpm, self._tpm = self._tpm, None
        self._tcti = AgentTcti(self.channel, self.timeout)
        if tpm is not None:
            tpm.close()  # Esys_Finalize: no TPM command, whatever state the context was left in

    def close(self) -> None:
        """Close the channel (the agent keeps running)."""
        self._discard_tpm()
        self.channel.close()

    def _on_tpm(self, operation: Callable[[NodeTpm], _Result]) -> _Result:
        """Run `operation` on the node's TPM; a relay failure is raised as the agent reported it. Whatever
        fails, the next operation starts on a fresh TSS context."""
        tcti = self._tcti
        try:
            if self._tpm is None:
                self._tpm = NodeTpm(tcti)
                if self._interrupted:  # the agent answers in order: the late commands ran before these
                    self._tpm.flush_loaded()
                    self._interrupted = False
            return operation(self._tpm)
        except BaseException as exc:
            self._discard_tpm()
            self._interrupted = True
            if isinstance(exc, NodeTpmError) and tcti.failure is not None:
                raise tcti.failure from None
            raise

    def request_quote(self, nonce: bytes) -> NodeQuote:
        """Quote PCRs 0-9 and 14 (sha256) over `nonce` (1..64 bytes) with the node's AK (made on first use),
        with the PCR values, the EK and the event log."""
        if not 0 < len(nonce) <= MAX_NONCE_BYTES:
            raise AgentError(f"quote nonce must be 1..{MAX_NONCE_BYTES} bytes, got {len(nonce)}")

        def quote(tpm: NodeTpm) -> NodeQuote:
            ak = tpm.attestation_key()
            attest, signature = tpm.quote(nonce, QUOTED_PCRS)
            return NodeQuote(
                nonce=nonce,
                ak_public=ak.public,
                ak_name=ak.name,
                ek_public=tpm.ek_public(),
                quote=attest,
                signature=signature,
                pcr_values={"sha256": tpm.pcr_values(QUOTED_PCRS)},
                event_log=self.channel.event_log(self.timeout),
            )

        return self._on_tpm(quote)

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the node's AK and EK; returns the recovered secret.

        `credential_blob` and `encrypted_secret` are the contents of TPM2B_ID_OBJECT and
        TPM2B_ENCRYPTED_SECRET (as in trustedlaunch.tpm.credential.CredentialChallenge)."""
        return self._on_tpm(lambda tpm: tpm.activate_credential(credential_blob, encrypted_secret))

    def ek_certificate(self) -> bytes:
        """The node TPM's RSA EK certificate (DER), from NV index 0x01c00002."""
        return self._on_tpm(NodeTpm.ek_certificate)
