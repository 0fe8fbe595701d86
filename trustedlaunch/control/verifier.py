"""The verifier pipeline, in one place: verify evidence over a nonce against a policy, count it in the
attestation metrics, and issue an attestation token only for a pass by an AK the platform enrolled
(trustedlaunch.control.enrolled_aks).

`verify_request` is the whole pipeline of the verifier API (api/verifier_routes.py keeps the HTTP parsing
and the response): redeem the challenge nonce, look up the pool's policy and the enrolled AK, verify, count,
issue or withhold the token. The reconciler's attestation monitor shares its token step
(`attestation_token`, `TokenSubject`: the same claims); it verifies through trustedlaunch.attest.remote,
which calls the same `verify` and counts the same metrics.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from trustedlaunch.attest.evidence import Evidence
from trustedlaunch.attest.metrics import record_attestation
from trustedlaunch.attest.nonces import DEFAULT_TTL_SECONDS, ChallengeStore, NonceError, NonceReusedError
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.quote import ClockState
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.control.enrolled_aks import (
    EnrolledNode,
    enrolled_node,
    not_in_pool_finding,
    token_withheld_reason,
)
from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.pool_policies import PoolPolicy, pool_policy
from trustedlaunch.control.records import Sessions
from trustedlaunch.control.tokens import Principal
from trustedlaunch.tpm.structures import TpmStructureError, parse_tpmt_public

NONCE_FILE = "attestation-nonces.db"
NONCE_TTL_ENV = "TL_ATTESTATION_NONCE_TTL"  # seconds a challenge nonce stays valid
POLICY_CACHE_SIZE = 64
MAX_CACHED_POLICY_SIZE = 128 * 1024  # larger policy documents are parsed per request, not kept


def open_challenge_store(config_dir: Path) -> ChallengeStore:
    """The challenge store of an API whose config (admin token) is in `config_dir`; the nonce TTL comes
    from TL_ATTESTATION_NONCE_TTL (seconds) when set."""
    text = os.environ.get(NONCE_TTL_ENV)
    try:
        ttl = DEFAULT_TTL_SECONDS if text is None else float(text)
    except ValueError:
        raise NonceError(f"{NONCE_TTL_ENV}={text!r} is not a number of seconds") from None
    return ChallengeStore(config_dir / NONCE_FILE, ttl_seconds=ttl)


def _parse_policy(canonical_json: bytes) -> Policy:
    return Policy.from_json(canonical_json, source="policy")


_cached_policy = functools.lru_cache(maxsize=POLICY_CACHE_SIZE)(_parse_policy)


def parse_policy(canonical_json: bytes) -> Policy:
    """A policy document (canonical JSON: sorted keys) parsed once per distinct content (a pool's nodes all
    send the same one); a large one each time (the cache stays small whatever callers send). Raises
    PolicyError."""
    if len(canonical_json) > MAX_CACHED_POLICY_SIZE:
        return _parse_policy(canonical_json)
    return _cached_policy(canonical_json)


@functools.lru_cache(maxsize=1024)
def ak_name(ak_public: bytes) -> bytes | None:
    """The TPM name of the AK that signed a quote (None if its public area does not parse); once per AK."""
    try:
        return parse_tpmt_public(ak_public).name()
    except TpmStructureError:
        return None


@dataclass(frozen=True)
class TokenSubject:
    """Whom an attestation token names: the node (`sub`), its agent pool and node image version."""

    node: str
    pool: str
    image_version: str

    @classmethod
    def for_ak(cls, name: bytes) -> TokenSubject:
        """Evidence checked against a caller's own policy: the AK itself ("ak:" + TPM name hex), no pool or
        image claims."""
        return cls("ak:" + name.hex(), "", "")


def verify_and_count(
    evidence: Evidence,
    *,
    nonce: bytes,
    policy: Policy,
    last_clock: ClockState | None = None,
    cache_log: bool = True,
) -> AttestationResult:
    """Verify evidence (trustedlaunch.attest.verifier.verify) and count the verdict and its duration in the
    attestation metrics."""
    started = time.perf_counter()
    result = verify(evidence, nonce=nonce, policy=policy, last_clock=last_clock, cache_log=cache_log)
    record_attestation(result, time.perf_counter() - started)
    return result


def attestation_token(
    issuer: TokenIssuer, result: AttestationResult, subject: TokenSubject, nonce: bytes | None = None
) -> str:
    """The signed token of a passed attestation naming `subject` (`nonce`: the relying party's, echoed)."""
    return issuer.issue(
        result, node=subject.node, pool=subject.pool, image_version=subject.image_version, nonce=nonce
    )


@dataclass(frozen=True)
class Verdict:
    """The verifier API's answer: the result, the token (a pass by an enrolled AK) or why it was withheld
    (a pass by any other key), and how long each step took (seconds: nonce, store, verify, token)."""

    result: AttestationResult
    token: str | None
    token_withheld: str | None
    timings: dict[str, float]


def _redeem(challenges: ChallengeStore, nonce: bytes) -> None:
    try:
        challenges.redeem(nonce)
    except NonceError as exc:
        raise ArmError(
            409 if isinstance(exc, NonceReusedError) else 400, exc.code, str(exc), "nonce"
        ) from None


def verify_request(
    *,
    challenges: ChallengeStore,
    sessions: Sessions,
    issuer: TokenIssuer,
    principal: Principal,
    nonce: bytes,
    evidence: Evidence,
    policy_or_pool: Policy | object,
) -> Verdict:
    """Run the verifier API's pipeline on a parsed request: `policy_or_pool` is the caller's policy or the
    poolId as sent. The nonce is redeemed first (an ArmError naming it: 400 NonceInvalid/NonceExpired, 409
    NonceAlreadyUsed), so that a caller learns nothing about which pools exist without spending one; the
    pool's lookup raises the ArmErrors of pool_policies.pool_policy. With a pool, evidence by an AK that is
    not enrolled for one of its current nodes fails (AkNotEnrolled) without its log being read."""
    started = time.perf_counter()
    _redeem(challenges, nonce)
    redeemed = time.perf_counter()
    pool: PoolPolicy | None = None
    enrolled: EnrolledNode | None = None
    name = ak_name(evidence.ak_public)
    with sessions() as session:
        if isinstance(policy_or_pool, Policy):
            policy = policy_or_pool
        else:
            pool = pool_policy(session, policy_or_pool, principal)
            policy = parse_policy(pool.document.encode())
        if name is not None:
            enrolled = enrolled_node(session, name, None if pool is None else pool.pool_id)
    looked_up = time.perf_counter()
    if pool is not None and enrolled is None and name is not None:
        result = AttestationResult(False, (not_in_pool_finding(name, pool.pool_name),))
        record_attestation(result, time.perf_counter() - looked_up)
    else:
        result = verify_and_count(evidence, nonce=nonce, policy=policy, cache_log=enrolled is not None)
    verified = time.perf_counter()
    token = withheld = None
    if result.ok and enrolled is not None and name is not None:
        subject = (
            TokenSubject.for_ak(name)
            if pool is None
            else TokenSubject(enrolled.name, pool.pool_name, enrolled.node_image_version)
        )
        token = attestation_token(issuer, result, subject, nonce)
    elif result.ok:
        withheld = token_withheld_reason(name)
    done = time.perf_counter()
    timings = {
        "nonce": redeemed - started,
        "store": looked_up - redeemed,
        "verify": verified - looked_up,
        "token": done - verified,
    }
    return Verdict(result, token, withheld, timings)
