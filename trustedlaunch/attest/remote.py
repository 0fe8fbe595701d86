"""Remote attestation of a node through its agent: enrollment (EK certificate + credential activation) on
first contact, then a quote over a fresh nonce verified against the pool's policy.

The verifier keeps a small `NodeState` per node (the enrolled AK name and the last TPM clock): a node whose
AK changes without a new enrollment is rejected (AK_BINDING), and the TPM clock must never go back.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from trustedlaunch.attest.evidence import Evidence
from trustedlaunch.attest.metrics import record_attestation
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.quote import ClockState
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.findings import AttestationError, Check, Finding
from trustedlaunch.tpm.credential import (
    check_ak_attributes,
    make_credential,
    new_activation_secret,
    verify_activation,
)
from trustedlaunch.tpm.ekca import verify_ek_certificate
from trustedlaunch.tpm.structures import TpmStructureError, TpmtPublic, parse_tpm2b_public

NONCE_SIZE = 32


class NodeStateError(TrustedLaunchError):
    """A stored node state document that cannot be read; the message names the field."""


class AgentQuote(Protocol):
    """What an agent returns for a quote request (trustedlaunch.node.channel.NodeQuote has this shape)."""

    @property
    def ak_public(self) -> bytes: ...  # TPM2B_PUBLIC
    @property
    def ak_name(self) -> bytes: ...
    @property
    def ek_public(self) -> bytes: ...  # TPM2B_PUBLIC of the RSA EK
    @property
    def quote(self) -> bytes: ...  # TPMS_ATTEST
    @property
    def signature(self) -> bytes: ...  # TPMT_SIGNATURE
    @property
    def pcr_values(self) -> dict[str, dict[int, bytes]]: ...
    @property
    def event_log(self) -> bytes | None: ...


class AgentLike(Protocol):
    """The node side of attestation (trustedlaunch.node.qemu.NodeVM is one)."""

    def request_quote(self, nonce: bytes) -> AgentQuote: ...

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes: ...

    def ek_certificate(self) -> bytes: ...


@dataclass(frozen=True)
class NodeState:
    """What the verifier remembers about one node between attestations (JSON-serializable)."""

    ak_name: bytes | None = None  # the AK enrolled by credential activation; None before enrollment
    clock: ClockState | None = None  # TPM clock of the last accepted quote

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "akName": self.ak_name.hex() if self.ak_name is not None else None,
            "clock": None
            if self.clock is None
            else {"resetCount": self.clock.reset_count, "clock": self.clock.clock},
        }

    @classmethod
    def from_dict(cls, document: object) -> NodeState:
        """Read the form written by `to_dict`; raise NodeStateError naming the bad field."""
        if not isinstance(document, Mapping) or set(document) - {"akName", "clock"}:
            raise NodeStateError(f"node state: expected an object with akName and clock, got {document!r}")
        ak_name = document.get("akName")
        clock = document.get("clock")
        try:
            name = bytes.fromhex(ak_name) if ak_name is not None else None
        except (TypeError, ValueError):
            raise NodeStateError(f"node state: field 'akName': expected hex, got {ak_name!r}") from None
        if clock is None:
            return cls(name, None)
        if (
            not isinstance(clock, Mapping)
            or not isinstance(clock.get("resetCount"), int)
            or not isinstance(clock.get("clock"), int)
        ):
            raise NodeStateError(
                f"node state: field 'clock': expected resetCount and clock integers, got {clock!r}"
            )
        return cls(name, ClockState(clock["resetCount"], clock["clock"]))


@dataclass(frozen=True)
class NodeAttestation:
    """The verdict on one node and the state to store for its next attestation."""

    result: AttestationResult
    state: NodeState
    enrolled: bool  # True when this attestation enrolled the node's AK (first contact)
    nonce: bytes | None = None  # the verifier's nonce the quote was asked over
    quote: AgentQuote | None = None  # the agent's answer: the evidence, kept for the history
    duration: float = 0.0  # seconds from the quote request to the verdict

    @property
    def ok(self) -> bool:
        """True when the node is trusted."""
        return self.result.ok


def evidence_from_quote(quote: AgentQuote) -> Evidence:
    """The verifier's evidence from an agent's quote; raise AttestationError if the node sent no event log
    or an AK that does not parse."""
    if not quote.event_log:
        raise AttestationError(
            Finding(
                Check.EVIDENCE_FORMAT, "event log", "the node sent no event log (kernel without TPM log?)"
            )
        )
    ak = _parse_public(quote.ak_public, "AK")
    return Evidence(ak.raw, quote.quote, quote.signature, quote.event_log, quote.pcr_values)


def _parse_public(data: bytes, component: str) -> TpmtPublic:
    try:
        return parse_tpm2b_public(data)
    except TpmStructureError as exc:
        raise AttestationError(
            Finding(Check.EVIDENCE_FORMAT, component, f"the {component} public area does not parse: {exc}")
        ) from None


def _binding_failure(message: str) -> AttestationError:
    return AttestationError(Finding(Check.AK_BINDING, "AK", message))


def enroll(agent: AgentLike, quote: AgentQuote, ek_ca: Sequence[x509.Certificate]) -> bytes:
    """First contact: the EK certificate chains to the platform CA and certifies the quote's EK, the AK
    is a restricted signing key, and the TPM holding that EK proves (TPM2_ActivateCredential) that it
    holds the AK. Returns the enrolled AK name; raises AttestationError."""
    ek = _parse_public(quote.ek_public, "EK")
    ak = _parse_public(quote.ak_public, "AK")
    try:
        certificate = x509.load_der_x509_certificate(agent.ek_certificate())
    except (ValueError, x509.InvalidVersion) as exc:
        raise AttestationError(
            Finding(Check.EK_CERTIFICATE, "EK", f"the node's EK certificate is not DER X.509: {exc}")
        ) from None
    verify_ek_certificate(certificate, ek_ca, ek=ek)
    check_ak_attributes(ak)
    if quote.ak_name != ak.name():
        raise _binding_failure(
            f"the agent reports AK name {quote.ak_name.hex()} but its AK public area hashes to "
            f"{ak.name().hex()}"
        )
    secret = new_activation_secret()
    challenge = make_credential(ek, ak.name(), secret)
    try:
        recovered = agent.activate(challenge.credential_blob, challenge.encrypted_secret)
    except TrustedLaunchError as exc:
        raise _binding_failure(
            f"credential activation failed in the node's TPM ({exc}): the AK is not in the TPM of the "
            "certified EK"
        ) from None
    verify_activation(secret, recovered)
    return ak.name()


def attest_node(
    agent: AgentLike,
    *,
    policy: Policy,
    ek_ca: Sequence[x509.Certificate],
    node_state: NodeState | None = None,
) -> NodeAttestation:
    """Attest one node: quote over a fresh random nonce, enrollment on first contact (no AK name in
    `node_state`), else the AK must be the enrolled one; then `verify` against `policy` and the stored
    clock. Agent transport errors (TrustedLaunchError) propagate; every verdict is in the result and in
    the attestation metrics."""
    started = time.perf_counter()
    state = node_state or NodeState()
    nonce = secrets.token_bytes(NONCE_SIZE)
    quote = agent.request_quote(nonce)
    enrolled = state.ak_name is None
    try:
        if state.ak_name is None:
            ak_name = enroll(agent, quote, ek_ca)
        else:
            ak_name = _parse_public(quote.ak_public, "AK").name()
            if ak_name != state.ak_name:
                raise _binding_failure(
                    f"the node quotes with AK {ak_name.hex()} but enrolled AK {state.ak_name.hex()}: a new "
                    "AK needs a new enrollment (reimage), else the quote comes from another TPM"
                )
        evidence = evidence_from_quote(quote)
    except AttestationError as exc:
        rejected = AttestationResult(False, (exc.finding,))
        duration = time.perf_counter() - started
        record_attestation(rejected, duration)
        return NodeAttestation(rejected, state, False, nonce, quote, duration)
    result = verify(evidence, nonce=nonce, policy=policy, last_clock=state.clock)
    duration = time.perf_counter() - started
    record_attestation(result, duration)
    clock = result.clock if result.ok and result.clock is not None else state.clock
    return NodeAttestation(result, NodeState(ak_name, clock), enrolled, nonce, quote, duration)
