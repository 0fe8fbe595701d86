"""The verifier API on the real app (SQLite, TestClient) with real quotes: a swtpm whose PCRs replay a real
GCE firmware log quotes each challenge nonce with tpm2-tools, as the in-guest node agent does
(tests/attacks/swtpm_agent.py). Also the nonce store alone: single use under threads and across two
stores on one file (two API worker processes), expiry, pruning, forged nonces."""

from __future__ import annotations

import base64
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attacks"))

from api_helpers import API, CLUSTER, RG_PATH, SUB, cluster_body, register_trusted_launch
from serve_process import start_serve
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from swtpm_agent import SwtpmAgent

from trustedlaunch.api.app import JWKS_PATH
from trustedlaunch.api.verifier_routes import CHALLENGE_PATH, VERIFY_PATH
from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import extend_event_log
from trustedlaunch.attest.nonces import (
    NONCE_SIZE,
    ChallengeStore,
    NonceExpiredError,
    NonceInvalidError,
    NonceReusedError,
)
from trustedlaunch.attest.policy import BootStep, Policy, RootFilesystemRule
from trustedlaunch.attest.remote import evidence_from_quote
from trustedlaunch.control.bootstrap import ATTESTATION_ISSUER
from trustedlaunch.control.image_policies import record_image_policy
from trustedlaunch.control.tokens import ATTESTATION_API_PATH, create_token
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.eventlog.types import EV_NO_ACTION
from trustedlaunch.store.models import AgentPool, Node
from trustedlaunch.tpm.structures import parse_tpm2b_public
from trustedlaunch.tpm.swtpm import Swtpm

RHEL8 = "go-tpm-tools/eventlogs/rhel8-uefi.bin"  # GCE RHEL 8, Secure Boot on
OTHER_LOG = "go-tpm-tools/eventlogs/debian-10.bin"  # another real boot, small enough for the body limit


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def node(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwtpmAgent]:
    """An honest node: a real swtpm holding the RHEL 8 boot in its PCRs, quoting with tpm2-tools."""
    raw_log = (testdata / RHEL8).read_bytes()
    log = parse_event_log(raw_log)
    pcrs = sorted({event.pcr for event in log.events if event.event_type != EV_NO_ACTION})
    with Swtpm() as tpm:
        extend_event_log(tpm, log)
        work = tmp_path_factory.mktemp("verifier-api-node")
        yield SwtpmAgent(tpm, work, b"", raw_log, f"sha256:{','.join(map(str, pcrs))}")


@pytest.fixture(scope="module")
def policy_document(node: SwtpmAgent) -> dict[str, Any]:
    """The pool policy as `tl policy from-log` prints it for the node's boot."""
    return policy_from_summary(summarize(parse_event_log(node.event_log))).to_dict()


def _challenge(client: TestClient) -> bytes:
    response = client.post(CHALLENGE_PATH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"nonce", "expiresAt"}
    return bytes.fromhex(body["nonce"])


def _evidence(node: SwtpmAgent, nonce: bytes) -> dict[str, Any]:
    return evidence_from_quote(node.request_quote(nonce)).to_dict()


def _verify(client: TestClient, nonce: bytes, evidence: object, policy: object) -> Any:
    return client.post(VERIFY_PATH, json={"nonce": nonce.hex(), "evidence": evidence, "policy": policy})


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


def test_honest_node_passes_and_gets_a_token_the_jwks_verifies(
    pools: TestClient, node: SwtpmAgent, policy_document: dict[str, Any]
) -> None:
    client = pools
    nonce = _challenge(client)
    verdict = _verify(client, nonce, _evidence(node, nonce), policy_document).json()
    assert verdict["ok"] is True and "token" not in verdict  # the platform did not enroll its AK yet
    assert "is not one the platform enrolled" in verdict["tokenWithheld"]

    _enroll(client, node)
    nonce = _challenge(client)
    quote = node.request_quote(nonce)
    response = _verify(client, nonce, evidence_from_quote(quote).to_dict(), policy_document)
    assert response.status_code == 200, response.text
    verdict = response.json()
    assert verdict["ok"] is True and verdict["findings"] == [] and "tokenWithheld" not in verdict
    assert verdict["secureBoot"] is True
    replayed = {int(pcr): bytes.fromhex(value) for pcr, value in verdict["pcrs"]["sha256"].items()}
    assert replayed == quote.pcr_values["sha256"]  # what the TPM holds, PCR for PCR
    assert "verify;dur=" in response.headers["Server-Timing"]

    jwks = jwt.PyJWKSet.from_dict(client.get(JWKS_PATH).json())
    kid = jwt.get_unverified_header(verdict["token"])["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(verdict["token"], key.key, algorithms=["ES256"], issuer=ATTESTATION_ISSUER)
    assert claims["nonce"] == nonce.hex()
    assert claims["sub"] == "ak:" + parse_tpm2b_public(quote.ak_public).name().hex()
    assert (claims["x-tl-node-pool"], claims["x-tl-image-version"]) == ("", "")  # the caller's policy
    assert claims["secureboot"] is True
    assert claims["x-tl-pcrs"] == [
        {"bank": "sha256", "index": int(pcr), "value": value}
        for pcr, value in verdict["pcrs"]["sha256"].items()
    ]


def test_replayed_nonce_is_refused(
    client: TestClient, node: SwtpmAgent, policy_document: dict[str, Any]
) -> None:
    nonce = _challenge(client)
    evidence = _evidence(node, nonce)
    assert _verify(client, nonce, evidence, policy_document).json()["ok"] is True
    error = _error(_verify(client, nonce, evidence, policy_document), 409, "NonceAlreadyUsed")
    assert error["target"] == "nonce" and "already used" in error["message"]


def test_expired_nonce_is_refused(
    client: TestClient, node: SwtpmAgent, policy_document: dict[str, Any], tmp_path: Path
) -> None:
    clock = FakeClock()
    client.app.state.challenges = ChallengeStore(tmp_path / "nonces.db", ttl_seconds=30, clock=clock)  # type: ignore[attr-defined]
    nonce = _challenge(client)
    evidence = _evidence(node, nonce)
    clock.now += 31
    error = _error(_verify(client, nonce, evidence, policy_document), 400, "NonceExpired")
    assert "expired" in error["message"] and nonce.hex() in error["message"]


def test_nonce_not_issued_by_the_server_is_refused(
    client: TestClient, node: SwtpmAgent, policy_document: dict[str, Any]
) -> None:
    forged = os.urandom(NONCE_SIZE)
    error = _error(_verify(client, forged, _evidence(node, forged), policy_document), 400, "NonceInvalid")
    assert "not issued by this server" in error["message"]


def test_flipped_signature_byte_fails_the_quote_signature(
    client: TestClient, node: SwtpmAgent, policy_document: dict[str, Any]
) -> None:
    nonce = _challenge(client)
    evidence = _evidence(node, nonce)
    signature = bytearray(base64.b64decode(evidence["signature"]))
    signature[-1] ^= 0x01
    evidence["signature"] = base64.b64encode(bytes(signature)).decode()
    verdict = _verify(client, nonce, evidence, policy_document).json()
    assert verdict["ok"] is False and "token" not in verdict
    assert [finding["check"] for finding in verdict["findings"]] == ["QuoteSignatureInvalid"]
    _error(_verify(client, nonce, evidence, policy_document), 409, "NonceAlreadyUsed")  # used up anyway


def test_swapped_event_log_fails_the_pcr_digest(
    client: TestClient, node: SwtpmAgent, policy_document: dict[str, Any], testdata: Path
) -> None:
    nonce = _challenge(client)
    evidence = _evidence(node, nonce)
    evidence["eventLog"] = base64.b64encode((testdata / OTHER_LOG).read_bytes()).decode()
    verdict = _verify(client, nonce, evidence, policy_document).json()
    assert verdict["ok"] is False and "token" not in verdict
    [finding] = verdict["findings"]
    assert (finding["check"], finding["component"]) == ("PcrDigestMismatch", "quote")


def test_garbage_base64_is_a_400_naming_the_field(
    client: TestClient, node: SwtpmAgent, policy_document: dict[str, Any]
) -> None:
    nonce = _challenge(client)
    evidence = _evidence(node, nonce)
    evidence["quote"] = "not*base64!"
    error = _error(_verify(client, nonce, evidence, policy_document), 400, "InvalidEvidence")
    assert "field 'quote' is not valid base64" in error["message"]
    evidence["pcrValues"] = {"sha256": {"²": "00" * 32}}  # str.isdigit() accepts it, int() does not
    evidence["quote"] = base64.b64encode(b"\x00").decode()
    _error(_verify(client, nonce, evidence, policy_document), 400, "InvalidEvidence")
    # the nonce was not spent on malformed requests
    del evidence["pcrValues"]
    assert _verify(client, nonce, _evidence(node, nonce), policy_document).json()["ok"] is True


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"{not json", "InvalidRequestContent", "not a valid JSON document"),
        (b'{"nonce": "\xff"}', "InvalidRequestContent", "not a valid JSON document"),  # not UTF-8
        (b"[" * 10_000, "InvalidRequestContent", "not a valid JSON document"),  # nested too deep
        (b'{"nonce": NaN}', "InvalidRequestContent", "not a valid JSON document"),
        (b"[]", "InvalidRequestContent", "must be a JSON object"),
        (b'{"nonce": "zz", "evidence": {}, "policy": {}}', "NonceInvalid", "hex nonce"),
        (b'{"nonce": "00", "evidence": {}, "policy": {}, "extra": 1}', "InvalidRequestContent", "extra"),
        (b'{"nonce": "00", "evidence": []}', "InvalidEvidence", "expected a JSON object"),
    ],
)
def test_malformed_requests_are_400_arm_errors(
    client: TestClient, body: bytes, code: str, words: str
) -> None:
    response = client.post(VERIFY_PATH, content=body, headers={"Content-Type": "application/json"})
    assert words in _error(response, 400, code)["message"]


def test_policy_is_required_and_validated(
    client: TestClient, node: SwtpmAgent, policy_document: dict[str, Any]
) -> None:
    nonce = _challenge(client)
    evidence = _evidence(node, nonce)
    for extra in ({}, {"policy": policy_document, "poolId": TL_POOL}):
        response = client.post(VERIFY_PATH, json={"nonce": nonce.hex(), "evidence": evidence, **extra})
        error = _error(response, 400, "InvalidRequestContent")
        assert "Send either policy" in error["message"] and "poolId" in error["message"]
    error = _error(
        _verify(client, nonce, evidence, {**policy_document, "secureBoot": "yes"}), 400, "InvalidPolicy"
    )
    assert "secureBoot" in error["message"]
    deep: object = []
    for _ in range(300):  # orjson reads 1024 levels but writes only ~254: still a 400, not a 500
        deep = [deep]
    error = _error(_verify(client, nonce, evidence, deep), 400, "InvalidPolicy")
    assert "policy" in error["message"]


# --- verifying against a pool's policy (poolId) ----------------------------------------------------------

TL_POOL = f"{CLUSTER}/agentPools/nodepool1"
PLAIN_POOL = f"{RG_PATH}/managedClusters/plainCluster/agentPools/nodepool1"


@pytest.fixture
def pools(client: TestClient) -> TestClient:
    """A Secure Boot + vTPM pool (TL_POOL) and a pool without vTPM (PLAIN_POOL); no policy recorded yet."""
    register_trusted_launch(client)
    trusted = {"securityProfile": {"enableSecureBoot": True, "enableVTPM": True}}
    assert client.put(CLUSTER, params=API, json=cluster_body(**trusted)).status_code == 201
    plain = f"{RG_PATH}/managedClusters/plainCluster"
    assert client.put(plain, params=API, json=cluster_body()).status_code == 201
    return client


def _record_pool_policy(client: TestClient, secure_boot: bool, document: dict[str, Any]) -> str:
    """Record `document` as the reconciler does for the TL pool's image; return the image version."""
    sessions: sessionmaker[Session] = client.app.state.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:
        pool = session.scalars(select(AgentPool).order_by(AgentPool.id)).first()
        assert pool is not None
        record_image_policy(session, pool.node_image_version, secure_boot, Policy.from_dict(document))
        return pool.node_image_version


def _enroll(client: TestClient, node: SwtpmAgent) -> str:
    """Record `node`'s AK as the enrolled AK of a node of the TL pool, as the reconciler's enrollment (EK
    certificate + credential activation, see tests/attacks/test_verifier_tokens.py) does; the node name."""
    sessions: sessionmaker[Session] = client.app.state.sessions  # type: ignore[attr-defined]
    ak_name = (node.work / "ak.name").read_bytes()
    with sessions.begin() as session:
        pool = session.scalars(select(AgentPool).order_by(AgentPool.id)).first()
        assert pool is not None
        name = f"aks-{pool.name}-{pool.id:08d}-vmss000000"
        session.add(
            Node(
                pool_id=pool.id,
                ordinal=0,
                name=name,
                node_image_version=pool.node_image_version,
                state="Ready",
                enrolled_ak_name=ak_name.hex(),
            )
        )
    return name


def _verify_pool(client: TestClient, node: SwtpmAgent, pool_id: object) -> Any:
    nonce = _challenge(client)
    body = {"nonce": nonce.hex(), "evidence": _evidence(node, nonce), "poolId": pool_id}
    return client.post(VERIFY_PATH, json=body)


def test_pool_id_verifies_against_the_pools_recorded_policy(
    pools: TestClient, node: SwtpmAgent, policy_document: dict[str, Any]
) -> None:
    error = _error(_verify_pool(pools, node, TL_POOL), 409, "AttestationPolicyNotReady")
    assert "'nodepool1' has no attestation policy yet" in error["message"] and error["target"] == "poolId"

    _record_pool_policy(pools, False, policy_document)  # the Secure Boot off policy: not this pool's
    _error(_verify_pool(pools, node, TL_POOL), 409, "AttestationPolicyNotReady")

    version = _record_pool_policy(pools, True, policy_document)
    node_name = _enroll(pools, node)
    response = _verify_pool(pools, node, TL_POOL.lower())  # ARM ids are case-insensitive
    assert response.status_code == 200, response.text
    verdict = response.json()
    assert verdict["ok"] is True, verdict["findings"]
    claims = jwt.decode(verdict["token"], options={"verify_signature": False})
    assert (claims["sub"], claims["x-tl-node-pool"], claims["x-tl-image-version"]) == (
        node_name,
        "nodepool1",
        version,
    )

    recorded = Policy.from_dict(policy_document)
    other_image = dataclasses.replace(  # an image with other boot applications
        recorded,
        boot_applications=tuple(
            BootStep(step.component, frozenset({"00" * 32})) for step in recorded.boot_applications or ()
        ),
    )
    _record_pool_policy(pools, True, other_image.to_dict())  # the image's policy changed: it applies
    verdict = _verify_pool(pools, node, TL_POOL).json()
    assert verdict["ok"] is False and "token" not in verdict
    assert {finding["check"] for finding in verdict["findings"]} == {"BootApplicationNotAllowed"}

    root_hash = "5e" * 32  # a node image with a dm-verity root filesystem: its root hash on the command line
    rootfs_image = dataclasses.replace(recorded, root_filesystem=RootFilesystemRule(root_hash, version))
    _record_pool_policy(pools, True, rootfs_image.to_dict())
    verdict = _verify_pool(pools, node, TL_POOL).json()
    assert verdict["ok"] is False and "token" not in verdict
    [finding] = verdict["findings"]
    assert (finding["check"], finding["component"], finding["pcr"]) == (
        "RootFilesystemNotAllowed",
        "root filesystem",
        8,
    )
    assert finding["message"] == (
        f"root filesystem hash differs from node image {version}: the measured command line has no "
        f"trustedlaunch.verity_roothash, expected {root_hash}"
    )


@pytest.mark.parametrize(
    ("pool_id", "status", "code"),
    [
        (PLAIN_POOL, 400, "AttestationNotSupported"),
        (f"{CLUSTER}/agentPools/nosuchpool", 404, "ResourceNotFound"),
        (f"{RG_PATH}/managedClusters/nosuchcluster/agentPools/nodepool1", 404, "ResourceNotFound"),
        (CLUSTER, 400, "InvalidPoolId"),
        (f"{CLUSTER}/agentPools/nodepool1/machines/x", 400, "InvalidPoolId"),
        (42, 400, "InvalidPoolId"),
    ],
)
def test_pool_id_refusals_name_the_reason(
    pools: TestClient, node: SwtpmAgent, pool_id: object, status: int, code: str
) -> None:
    _error(_verify_pool(pools, node, pool_id), status, code)


def test_pool_id_must_lie_in_the_tokens_scope_unless_the_token_is_for_the_verifier(
    pools: TestClient, node: SwtpmAgent, policy_document: dict[str, Any]
) -> None:
    _record_pool_policy(pools, True, policy_document)
    sessions: sessionmaker[Session] = pools.app.state.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:
        other_group = create_token(session, "other-group", f"/subscriptions/{SUB}/resourceGroups/otherGroup")
        own_group = create_token(session, "own-group", f"/subscriptions/{SUB}/resourceGroups/myResourceGroup")
        agent = create_token(session, "node-agent", ATTESTATION_API_PATH)
    for token, status in ((other_group, 403), (own_group, 200), (agent, 200)):
        pools.headers["Authorization"] = f"Bearer {token}"
        response = _verify_pool(pools, node, TL_POOL)
        assert response.status_code == status, response.text
    pools.headers["Authorization"] = f"Bearer {other_group}"
    error = _error(_verify_pool(pools, node, TL_POOL), 403, "AuthorizationFailed")
    assert "agentPools/read" in error["message"] and "other-group" in error["message"]


def test_evidence_over_the_body_limit_is_413(client: TestClient) -> None:
    nonce = _challenge(client)
    big_log = base64.b64encode(os.urandom(100 * 1024)).decode()  # the test app's body limit is 64 KiB
    evidence = {"akPublic": "AA==", "quote": "AA==", "signature": "AA==", "eventLog": big_log}
    _error(_verify(client, nonce, evidence, {}), 413, "RequestEntityTooLarge")


def test_verifier_api_needs_a_bearer_token(client: TestClient) -> None:
    del client.headers["Authorization"]
    _error(client.post(CHALLENGE_PATH), 401, "AuthenticationFailed")


# --- the nonce store ------------------------------------------------------------------------------------


def test_a_nonce_is_redeemed_once_among_racing_threads(tmp_path: Path) -> None:
    store = ChallengeStore(tmp_path / "nonces.db")
    nonce = store.issue().nonce
    outcomes: list[str] = []

    def redeem() -> None:
        try:
            store.redeem(nonce)
            outcomes.append("accepted")
        except NonceReusedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=redeem) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted"] + ["refused"] * 15


def test_worker_stores_on_one_file_share_key_and_used_set(tmp_path: Path) -> None:
    first, second = ChallengeStore(tmp_path / "n.db"), ChallengeStore(tmp_path / "n.db")
    nonce = first.issue().nonce
    second.redeem(nonce)  # the other worker verifies the MAC with the same key
    with pytest.raises(NonceReusedError):
        first.redeem(nonce)
    with pytest.raises(NonceInvalidError):
        ChallengeStore(tmp_path / "other.db").redeem(first.issue().nonce)
    assert (tmp_path / "n.db").stat().st_mode & 0o077 == 0


def test_used_nonces_are_pruned_after_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    store = ChallengeStore(tmp_path / "nonces.db", ttl_seconds=30, clock=clock)
    used = [store.issue().nonce for _ in range(5)]
    for nonce in used:
        store.redeem(nonce)
    assert store.used_count() == 5
    clock.now += 60
    fresh = store.issue().nonce
    store.redeem(fresh)
    assert store.used_count() == 1
    with pytest.raises(NonceExpiredError):
        store.redeem(used[0])
    tampered = bytes([fresh[0] ^ 0x01]) + fresh[1:]  # a later expiry written into the nonce
    with pytest.raises(NonceInvalidError):
        store.redeem(tampered)


def test_metrics_add_up_every_worker(
    node: SwtpmAgent, policy_document: dict[str, Any], tmp_path: Path
) -> None:
    """With `tl serve --workers 2`, /metrics counts the attestations of both workers, whichever answers."""
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "TL_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
    }
    process, url, _banner = start_serve(env, "--workers", "2", "--no-auto-repair")
    try:
        token = (tmp_path / "config" / "trustedlaunch" / "admin-token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        verifications = 8
        for _ in range(verifications):  # a new connection each: the kernel hands them to either worker
            nonce = bytes.fromhex(httpx.post(url + CHALLENGE_PATH, headers=headers).json()["nonce"])
            body = {"nonce": nonce.hex(), "evidence": _evidence(node, nonce), "policy": policy_document}
            assert httpx.post(url + VERIFY_PATH, headers=headers, json=body).json()["ok"] is True
        for _ in range(6):
            scraped = httpx.get(f"{url}/metrics", headers=headers).text
            assert f'trustedlaunch_attestations_total{{result="passed"}} {verifications:.1f}' in scraped, (
                scraped
            )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
