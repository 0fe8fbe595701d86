"""The verifier API: a relying party or a node agent gets a challenge nonce, quotes over it, posts the
evidence and gets a verdict, with an attestation token (JWT, keys at /.well-known/jwks.json) if it passed.

    POST /providers/Microsoft.TrustedLaunch/attestation/challenge -> {"nonce": hex, "expiresAt": ISO 8601}
    POST /providers/Microsoft.TrustedLaunch/attestation/verify
         {"nonce": hex, "evidence": {akPublic, quote, signature, eventLog, pcrValues?} (the evidence JSON
          of trustedlaunch.attest.evidence), and either "policy": a policy document (as `tl policy
          from-log` makes) or "poolId": an agent pool's resource id (its policy: the one the reconciler
          derived from the pool's node image and Secure Boot setting, trustedlaunch.control.pool_policies)}
      -> {"ok", "findings": [...], "secureBoot", "pcrs": {bank: {index: hex}}, "token"?, "tokenWithheld"?}

Every valid API token may call these; a token scoped to the verifier API (`tl token create --scope
/providers/Microsoft.TrustedLaunch/attestation`) may call nothing else, as node agents and relying parties
should hold. Nonces are single-use and expire (trustedlaunch.attest.nonces); a bad, expired or replayed nonce
is an ARM error naming it (400 NonceInvalid / 400 NonceExpired / 409 NonceAlreadyUsed). Malformed requests
(and a policy that sets no rule, see trustedlaunch.attest.policy) are 400 ARM errors with the parser's
message, the nonce unspent; the nonce is redeemed before the poolId is looked up, so that a caller learns
nothing about which pools exist without spending one. Evidence that parses but does not verify is a 200
with ok=false and the findings. A poolId must lie inside the caller's token scope, except for tokens scoped
to the verifier API (node agents and relying parties may name any pool: they get a verdict on their own
evidence, never the policy).

A token means "a TPM this platform enrolled proved this boot" (trustedlaunch.control.enrolled_aks):
* with poolId, the quote's AK must be the enrolled AK of a current node of that pool, else ok=false with an
  AkNotEnrolled finding (the log is not even read); the token of a pass names the node (`sub`), the pool
  and the node's image version, as the reconciler's tokens do;
* with a policy of the caller's, a pass by an enrolled AK gets a token whose `sub` is the AK ("ak:" + its
  TPM name hex) and no pool or image claims (empty); a pass by any other key gets no token, and
  `tokenWithheld` says why. Such evidence is verified without caching its parsed log.

This module parses requests and writes answers; the pipeline (nonce, pool policy, enrolled AK, verify,
metrics, token) is trustedlaunch.control.verifier.verify_request. Handlers run on the event loop (no
thread-pool hop, see routes.py): a verification is ~1 ms of CPU, plus one or two indexed store reads
(the pool, the enrolled AK). Each answer carries a `Server-Timing` header
(parse, nonce, store, verify, token and total, in ms) so that load benchmarks can compare the server's own
time with the latency clients see.
"""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from trustedlaunch.attest.evidence import Evidence, EvidenceError
from trustedlaunch.attest.nonces import ChallengeStore
from trustedlaunch.attest.policy import Policy, PolicyError
from trustedlaunch.control.errors import ArmError, bad_request
from trustedlaunch.control.tokens import ATTESTATION_API_PATH
from trustedlaunch.control.verifier import parse_policy, verify_request

CHALLENGE_PATH = f"{ATTESTATION_API_PATH}/challenge"
VERIFY_PATH = f"{ATTESTATION_API_PATH}/verify"
_REQUEST_FIELDS = frozenset({"nonce", "evidence", "policy", "poolId"})

router = APIRouter(tags=["attestation"])


class Challenge(BaseModel):
    """A single-use nonce to quote over (hex) and when it expires (ISO 8601)."""

    nonce: str
    expiresAt: str


class VerifyResponse(BaseModel):
    """The verdict on evidence: pass or not, every finding, the Secure Boot state the log shows, the
    replayed PCRs (bank -> index -> hex), and the token of a pass or why it was withheld."""

    ok: bool
    findings: list[dict[str, object]]
    secureBoot: bool | None
    pcrs: dict[str, dict[str, str]]
    token: str | None = None
    tokenWithheld: str | None = None


@router.post(CHALLENGE_PATH, response_model=Challenge)
async def challenge(request: Request) -> dict[str, str]:
    """A fresh single-use nonce to quote over, and when it expires."""
    store: ChallengeStore = request.app.state.challenges
    issued = store.issue()
    return {"nonce": issued.nonce.hex(), "expiresAt": issued.expires_at.isoformat()}


def _invalid(message: str, target: str) -> ArmError:
    return bad_request("InvalidRequestContent", message, target)


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
        policy = parse_policy(orjson.dumps(document["policy"], option=orjson.OPT_SORT_KEYS))
    except PolicyError as exc:
        raise bad_request("InvalidPolicy", str(exc), "policy") from None
    except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes (it reads deeper than it writes)
        raise bad_request("InvalidPolicy", f"policy: {exc}", "policy") from None
    return nonce, evidence, policy


@router.post(VERIFY_PATH, response_model=VerifyResponse, response_model_exclude_unset=True)
async def verify_evidence(request: Request) -> Response:
    """Verify evidence over a challenge nonce against a policy or a pool's; a token when it passes and the
    quote's AK is one the platform enrolled."""
    started = time.perf_counter()
    nonce, evidence, policy_or_pool = _read_request(await request.body())
    parsed = time.perf_counter()
    verdict = verify_request(
        challenges=request.app.state.challenges,
        sessions=request.app.state.sessions,
        issuer=request.app.state.token_issuer,
        principal=request.state.principal,
        nonce=nonce,
        evidence=evidence,
        policy_or_pool=policy_or_pool,
    )
    result = verdict.result
    answer: dict[str, object] = {
        "ok": result.ok,
        "findings": [finding.to_dict() for finding in result.findings],
        "secureBoot": None if result.summary is None else result.summary.secure_boot,
        "pcrs": {
            bank: {str(pcr): value.hex() for pcr, value in sorted(values.items())}
            for bank, values in result.replayed_pcrs.items()
        },
    }
    if verdict.token is not None:
        answer["token"] = verdict.token
    elif verdict.token_withheld is not None:
        answer["tokenWithheld"] = verdict.token_withheld
    done = time.perf_counter()
    phases = {"parse": parsed - started, **verdict.timings, "total": done - started}
    timing = ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in phases.items())
    return Response(orjson.dumps(answer), media_type="application/json", headers={"Server-Timing": timing})
