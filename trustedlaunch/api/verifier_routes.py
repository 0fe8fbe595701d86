"""The verifier API: a relying party or a node agent gets a challenge nonce, quotes over it, posts the
evidence and gets a verdict, with an attestation token (JWT, keys at /.well-known/jwks.json) if it passed.

    POST /providers/Microsoft.TrustedLaunch/attestation/challenge -> {"nonce": hex, "expiresAt": ISO 8601}
    POST /providers/Microsoft.TrustedLaunch/attestation/verify
         {"nonce": hex, "evidence": {akPublic, quote, signature, eventLog, pcrValues?} (the evidence JSON
          of trustedlaunch.attest.evidence), and either "policy": a policy document (as `tl policy
          from-log` makes) or "poolId": an agent pool's resource id (its policy: the one the reconciler
          derived from the pool's node image and Secure Boot setting, trustedlaunch.control.pool_policies)}
      -> {"ok", "findings": [...], "secureBoot", "pcrs": {bank: {index: hex}}, "token"?}

Every valid API token may call these; a token scoped to the verifier API (`tl token create --scope
/providers/Microsoft.TrustedLaunch/attestation`) may call nothing else, as node agents and relying parties
should hold. Nonces are single-use and expire (trustedlaunch.attest.nonces); a bad, expired or replayed nonce
is an ARM error naming it (400 NonceInvalid / 400 NonceExpired / 409 NonceAlreadyUsed). Malformed requests are
400 ARM errors with the parser's message; evidence that parses but does not verify is a 200 with ok=false and
the findings. A poolId must lie inside the caller's token scope, except for tokens scoped to the verifier
API (node agents and relying parties may name any pool: they get a verdict on their own evidence, never the
policy). The token of a pass verified by poolId names the pool and its node image version, as the
reconciler's tokens do (x-tl-node-pool, x-tl-image-version).

Handlers run on the event loop (no thread-pool hop, see routes.py): a verification is ~1 ms of CPU, a poolId
adds one indexed store read (counted in "parse"). Each answer carries a `Server-Timing` header (parse,
nonce, verify, token and total, in ms) so that load benchmarks can compare the server's own time with the
latency clients see.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from trustedlaunch.attest.evidence import Evidence, EvidenceError
from trustedlaunch.attest.metrics import record_attestation
from trustedlaunch.attest.nonces import DEFAULT_TTL_SECONDS, ChallengeStore, NonceError, NonceReusedError
from trustedlaunch.attest.policy import Policy, PolicyError
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.attest.verifier import verify
from trustedlaunch.control.errors import ArmError, bad_request
from trustedlaunch.control.pool_policies import PoolPolicy, pool_policy
from trustedlaunch.control.tokens import ATTESTATION_API_PATH
from trustedlaunch.tpm.structures import parse_tpmt_public

CHALLENGE_PATH = f"{ATTESTATION_API_PATH}/challenge"
VERIFY_PATH = f"{ATTESTATION_API_PATH}/verify"
NONCE_FILE = "attestation-nonces.db"
NONCE_TTL_ENV = "TL_ATTESTATION_NONCE_TTL"  # seconds a challenge nonce stays valid
POLICY_CACHE_SIZE = 64
_REQUEST_FIELDS = frozenset({"nonce", "evidence", "policy", "poolId"})

router = APIRouter(tags=["attestation"])


def open_challenge_store(config_dir: Path) -> ChallengeStore:
    """The challenge store of an API whose config (admin token) is in `config_dir`; the nonce TTL comes
    from TL_ATTESTATION_NONCE_TTL (seconds) when set."""
    text = os.environ.get(NONCE_TTL_ENV)
    try:
        ttl = DEFAULT_TTL_SECONDS if text is None else float(text)
    except ValueError:
        raise NonceError(f"{NONCE_TTL_ENV}={text!r} is not a number of seconds") from None
    return ChallengeStore(config_dir / NONCE_FILE, ttl_seconds=ttl)


@router.post(CHALLENGE_PATH)
async def challenge(request: Request) -> dict[str, str]:
    """A fresh single-use nonce to quote over, and when it expires."""
    store: ChallengeStore = request.app.state.challenges
    issued = store.issue()
    return {"nonce": issued.nonce.hex(), "expiresAt": issued.expires_at.isoformat()}


def _invalid(message: str, target: str) -> ArmError:
    return bad_request("InvalidRequestContent", message, target)


@functools.lru_cache(maxsize=POLICY_CACHE_SIZE)
def _policy(canonical_json: bytes) -> Policy:
    """A policy document parsed once per distinct content (a pool's nodes all send the same one)."""
    return Policy.from_json(canonical_json, source="policy")


def _read_request(body: bytes) -> tuple[bytes, Evidence, Policy | object]:
    """The nonce, evidence and policy (or the poolId as sent) of a verify request; raise a 400 ArmError
    naming the bad field."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"The request body is not a valid JSON document: {exc}", "body") from None
    if not isinstance(document, dict):
        raise _invalid(f"The request body must be a JSON object, got {type(document).__name__}.", "body")
    unknown = sorted(set(document) - _REQUEST_FIELDS)
    if unknown:
        raise _invalid(f"Unknown field(s) {', '.join(unknown)}.", unknown[0])
    nonce_text = document.get("nonce")
    try:
        nonce = bytes.fromhex(nonce_text) if isinstance(nonce_text, str) else None
    except ValueError:
        nonce = None
    if not nonce:
        raise bad_request(
            "NonceInvalid", f"nonce: expected the hex nonce of a challenge, got {nonce_text!r}", "nonce"
        )
    if "evidence" not in document:
        raise _invalid("evidence: required (akPublic, quote, signature, eventLog as base64).", "evidence")
    try:
        evidence = Evidence.from_dict(document["evidence"], source="evidence")
    except EvidenceError as exc:
        raise bad_request("InvalidEvidence", str(exc), "evidence") from None
    if ("policy" in document) == ("poolId" in document):
        raise _invalid(
            "Send either policy (a policy document, as `tl policy from-log` makes) or poolId (the resource "
            "id of the agent pool whose policy applies), not "
            + ("both." if "policy" in document else "neither."),
            "policy",
        )
    if "poolId" in document:
        return nonce, evidence, document["poolId"]
    try:
        policy = _policy(orjson.dumps(document["policy"], option=orjson.OPT_SORT_KEYS))
    except PolicyError as exc:
        raise bad_request("InvalidPolicy", str(exc), "policy") from None
    return nonce, evidence, policy


@functools.lru_cache(maxsize=4096)
def _token_subject(ak_public: bytes) -> str:
    """The token subject: the name of the AK that signed the quote (what the evidence proves); once per AK."""
    return "ak:" + parse_tpmt_public(ak_public).name().hex()


@router.post(VERIFY_PATH)
async def verify_evidence(request: Request) -> Response:
    """Verify evidence over a challenge nonce against a policy; a token when it passes."""
    started = time.perf_counter()
    nonce, evidence, policy_or_pool = _read_request(await request.body())
    pool: PoolPolicy | None = None
    if isinstance(policy_or_pool, Policy):
        policy = policy_or_pool
    else:
        with request.app.state.sessions() as session:
            pool = pool_policy(session, policy_or_pool, request.state.principal)
        policy = _policy(pool.document.encode())
    parsed = time.perf_counter()
    store: ChallengeStore = request.app.state.challenges
    try:
        store.redeem(nonce)
    except NonceError as exc:
        raise ArmError(
            409 if isinstance(exc, NonceReusedError) else 400, exc.code, str(exc), "nonce"
        ) from None
    redeemed = time.perf_counter()
    result = verify(evidence, nonce=nonce, policy=policy)
    verified = time.perf_counter()
    record_attestation(result, verified - redeemed)
    answer: dict[str, Any] = {
        "ok": result.ok,
        "findings": [finding.to_dict() for finding in result.findings],
        "secureBoot": None if result.summary is None else result.summary.secure_boot,
        "pcrs": {
            bank: {str(pcr): value.hex() for pcr, value in sorted(values.items())}
            for bank, values in result.replayed_pcrs.items()
        },
    }
    if result.ok:
        issuer: TokenIssuer = request.app.state.token_issuer
        answer["token"] = issuer.issue(
            result,
            node=_token_subject(evidence.ak_public),
            pool="" if pool is None else pool.pool_name,
            image_version="" if pool is None else pool.node_image_version,
            nonce=nonce,
        )
    done = time.perf_counter()
    timing = ", ".join(
        f"{name};dur={seconds * 1000:.3f}"
        for name, seconds in (
            ("parse", parsed - started),
            ("nonce", redeemed - parsed),
            ("verify", verified - redeemed),
            ("token", done - verified),
            ("total", done - started),
        )
    )
    return Response(orjson.dumps(answer), media_type="application/json", headers={"Server-Timing": timing})
