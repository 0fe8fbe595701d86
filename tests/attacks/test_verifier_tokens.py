"""Attacks on the verifier API's tokens and memory, against `tl serve --workers 2` over HTTP (issue 12, items
1, 5 and 12a).

The platform's node is a real swtpm whose EK the platform EK CA certified (conftest `lab`), enrolled through
the reconciler's own path: `AttestationMonitor.attest` (EK certificate chain + credential activation) on a
node row of a trusted launch pool in the store `tl serve` uses. The attacker holds a verifier-scoped token
and makes everything else: a P-256 key in software posing as an AK, quotes it signs itself over the server's
nonces (verifier_evidence.py), another real TPM the platform never enrolled (`lab.other`), event logs of
~770 KB (the body limit is 1 MiB of base64).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from serve_process import start_serve
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from swtpm_agent import Lab, SwtpmAgent
from verifier_evidence import SoftwareAk, bulk_log

from trustedlaunch.api.app import JWKS_PATH
from trustedlaunch.api.verifier_routes import CHALLENGE_PATH, VERIFY_PATH
from trustedlaunch.attest.remote import evidence_from_quote
from trustedlaunch.control.attestation_monitor import AttestationMonitor, Trigger
from trustedlaunch.control.bootstrap import ATTESTATION_ISSUER
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.image_policies import record_image_policy
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.resource_groups import find_group, put_group
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.control.tokens import ATTESTATION_API_PATH, create_token
from trustedlaunch.store.db import make_engine, session_factory
from trustedlaunch.store.models import Node
from trustedlaunch.store.vocabulary import AttestationStatus

SUB = "00000000-0000-0000-0000-00000000c0de"
GROUP = "attackers-target"
LOG_SIZE = 770_000  # base64 of it and the rest of the request stay below the 1 MiB body limit
VERIFY_CALLS = 100
MAX_GROWTH_BYTES = 100 * 1024 * 1024


@dataclass
class Served:
    """`tl serve --workers 2`, its store, and a verifier-scoped token (what node agents and relying parties
    hold)."""

    process: subprocess.Popen[str]
    url: str
    sessions: sessionmaker[Session]
    headers: dict[str, str]

    def nonce(self, client: httpx.Client | None = None) -> bytes:
        response = (client or httpx).post(self.url + CHALLENGE_PATH, headers=self.headers)
        assert response.status_code == 200, response.text
        return bytes.fromhex(response.json()["nonce"])

    def verify(self, body: dict[str, Any], client: httpx.Client | None = None) -> httpx.Response:
        return (client or httpx).post(self.url + VERIFY_PATH, headers=self.headers, json=body, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("verifier-tokens")
    database = f"sqlite:///{home / 'serve.db'}"
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "TL_DATABASE_URL": database,
    }
    process, url, _banner = start_serve(
        env, "--workers", "2", "--attestation-interval", "0", "--no-auto-repair"
    )
    engine = make_engine(database)
    sessions = session_factory(engine)
    try:
        with sessions.begin() as session:
            token = create_token(session, "relying-party", ATTESTATION_API_PATH)
        yield Served(process, url, sessions, {"Authorization": f"Bearer {token}"})
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        engine.dispose()


def pool_id(cluster: str, pool: str = "nodepool1") -> str:
    return (
        f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.ContainerService/managedClusters/"
        f"{cluster}/agentPools/{pool}"
    )


def create_pool_with_enrolled_node(served: Served, lab: Lab, cluster: str, node: SwtpmAgent) -> str:
    """A Secure Boot + vTPM pool (its create operation already finished: the reconciler boots nothing) with
    its image policy, and one node whose vTPM `node` the platform enrolls as the reconciler does; the node's
    name."""
    with served.sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        if find_group(session, SUB, GROUP) is None:
            put_group(session, SUB, GROUP, "eastus", None)
        spec = PoolSpec(
            "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
        )
        created, operation, _ = put_cluster(
            session, ResourcePath(SUB, GROUP, cluster), ClusterSpec("eastus", agent_pools=[spec])
        )
        finish_operation(session, operation, "Succeeded")
        pool = created.agent_pools[0]
        session.flush()
        record_image_policy(session, pool.node_image_version, True, lab.policy)
        row = Node(
            pool_id=pool.id,
            ordinal=0,
            name=f"aks-{pool.name}-{pool.id:08d}-vmss000000",
            node_image_version=pool.node_image_version,
            enable_secure_boot=True,
            enable_vtpm=True,
            state="Ready",
        )
        session.add(row)
        session.flush()
        record = AttestationMonitor().attest(
            session,
            pool,
            row,
            node,
            policy=lab.policy,
            ek_ca=[lab.platform_ca.certificate],
            trigger=Trigger.PROVISIONING,
        )
        assert record.status == AttestationStatus.ATTESTED, record.findings
        return row.name


def tpm_evidence(node: SwtpmAgent, nonce: bytes) -> dict[str, Any]:
    return evidence_from_quote(node.request_quote(nonce)).to_dict()


def claims_of(served: Served, token: str) -> dict[str, Any]:
    """The claims of a token the server's JWKS verifies."""
    jwks = jwt.PyJWKSet.from_dict(httpx.get(served.url + JWKS_PATH).json())
    key = next(k for k in jwks.keys if k.key_id == jwt.get_unverified_header(token)["kid"])
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["ES256"], issuer=ATTESTATION_ISSUER)
    return claims


def test_a_software_key_signing_its_own_quote_gets_no_token(served: Served, lab: Lab) -> None:
    """Attack: a P-256 key made in software signs a quote of the PCRs its log replays to, over the server's
    nonce. The evidence is self-consistent (ok: it matches the policy), but no TPM the platform knows made
    it: no token, and `tokenWithheld` says why. Naming a pool it is ok=false."""
    create_pool_with_enrolled_node(served, lab, "softak", lab.node)
    attacker = SoftwareAk()
    nonce = served.nonce()
    evidence = attacker.evidence(nonce, lab.event_log).to_dict()
    body = {"nonce": nonce.hex(), "evidence": evidence, "policy": lab.policy.to_dict()}
    verdict = served.verify(body).json()
    assert verdict["ok"] is True and verdict["secureBoot"] is True, verdict
    assert "token" not in verdict
    assert "is not one the platform enrolled" in verdict["tokenWithheld"]

    nonce = served.nonce()
    evidence = attacker.evidence(nonce, lab.event_log).to_dict()
    verdict = served.verify({"nonce": nonce.hex(), "evidence": evidence, "poolId": pool_id("softak")}).json()
    assert verdict["ok"] is False and "token" not in verdict
    [finding] = verdict["findings"]
    assert (finding["check"], finding["component"]) == ("AkNotEnrolled", "AK")
    assert "not one the platform enrolled" in finding["message"] and "'nodepool1'" in finding["message"]


def test_the_enrolled_node_gets_tokens_naming_it_only_through_its_pool(served: Served, lab: Lab) -> None:
    """The honest path still works: by poolId the token names the node, its pool and image version (as the
    reconciler's tokens do); with the caller's own policy it names only the AK, never a pool or node."""
    node_name = create_pool_with_enrolled_node(served, lab, "honest", lab.node)
    nonce = served.nonce()
    body = {"nonce": nonce.hex(), "evidence": tpm_evidence(lab.node, nonce), "poolId": pool_id("honest")}
    verdict = served.verify(body).json()
    assert verdict["ok"] is True, verdict["findings"]
    claims = claims_of(served, verdict["token"])
    assert (claims["sub"], claims["x-tl-node-pool"]) == (node_name, "nodepool1")
    assert claims["x-tl-image-version"] and claims["nonce"] == nonce.hex()

    nonce = served.nonce()
    body = {"nonce": nonce.hex(), "evidence": tpm_evidence(lab.node, nonce), "policy": lab.policy.to_dict()}
    claims = claims_of(served, served.verify(body).json()["token"])
    assert claims["sub"] == "ak:" + (lab.node.work / "ak.name").read_bytes().hex()
    assert (claims["x-tl-node-pool"], claims["x-tl-image-version"]) == ("", "")


def test_a_tpm_the_platform_did_not_enroll_for_the_pool_is_not_one_of_its_nodes(
    served: Served, lab: Lab
) -> None:
    """A real TPM (EK from another CA) never enrolled, and the pool's own node once deleted: "is this one of
    the pool's nodes?" is no (ok=false, AkNotEnrolled), although both quotes are genuine."""
    node_name = create_pool_with_enrolled_node(served, lab, "foreign", lab.node)
    nonce = served.nonce()
    body = {"nonce": nonce.hex(), "evidence": tpm_evidence(lab.other, nonce), "poolId": pool_id("foreign")}
    verdict = served.verify(body).json()
    assert verdict["ok"] is False and "token" not in verdict
    assert [finding["check"] for finding in verdict["findings"]] == ["AkNotEnrolled"]

    nonce = served.nonce()
    body = {"nonce": nonce.hex(), "evidence": tpm_evidence(lab.node, nonce), "poolId": pool_id("foreign")}
    assert served.verify(body).json()["ok"] is True  # the pool's node, while it exists
    with served.sessions.begin() as session:  # the reconciler deletes the node (scale down)
        session.delete(session.scalars(select(Node).where(Node.name == node_name)).one())
    nonce = served.nonce()
    body = {"nonce": nonce.hex(), "evidence": tpm_evidence(lab.node, nonce), "poolId": pool_id("foreign")}
    verdict = served.verify(body).json()
    assert verdict["ok"] is False and "token" not in verdict
    assert [finding["check"] for finding in verdict["findings"]] == ["AkNotEnrolled"]


def test_a_policy_without_rules_is_refused_unless_it_says_allow_any(served: Served, lab: Lab) -> None:
    """`{}` used to mean "any boot passes"; it is a 400 now (the nonce unspent), and only an explicit
    `"allowAny": true` accepts any boot."""
    nonce = served.nonce()
    evidence = tpm_evidence(lab.other, nonce)
    no_rules = {"version": 1, "requireValidSeparators": True}
    for policy in ({}, no_rules, {"allowAny": True, "secureBoot": True}):
        response = served.verify({"nonce": nonce.hex(), "evidence": evidence, "policy": policy})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["target"]) == ("InvalidPolicy", "policy")
        assert "allowAny" in error["message"]
    response = served.verify({"nonce": nonce.hex(), "evidence": evidence, "policy": {"allowAny": True}})
    assert response.status_code == 200, response.text
    verdict = response.json()
    assert verdict["ok"] is True and "token" not in verdict  # a real TPM, but not one the platform enrolled


def test_an_unknown_pool_is_not_told_apart_before_a_nonce_is_spent(served: Served, lab: Lab) -> None:
    """Probing pool ids with a bad nonce learns nothing (the nonce error comes first, whatever the pool);
    with a good nonce the answer costs that nonce."""
    evidence = tpm_evidence(lab.other, served.nonce())
    forged = os.urandom(32)
    for probe in (pool_id("nosuchcluster"), pool_id("honest", "nosuchpool"), pool_id("softak")):
        response = served.verify({"nonce": forged.hex(), "evidence": evidence, "poolId": probe})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "NonceInvalid"
    nonce = served.nonce()
    evidence = tpm_evidence(lab.other, nonce)
    body = {"nonce": nonce.hex(), "evidence": evidence, "poolId": pool_id("nosuchcluster")}
    assert served.verify(body).status_code == 404
    assert served.verify(body).json()["error"]["code"] == "NonceAlreadyUsed"


def worker_rss(served: Served) -> dict[int, int]:
    """Resident memory (bytes) of each process `tl serve` started (its API workers)."""
    pid = served.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    sizes = {}
    for child in map(int, children):
        status = Path(f"/proc/{child}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        sizes[child] = int(line.split()[1]) * 1024
    return sizes


def test_distinct_large_logs_do_not_fill_a_workers_memory(served: Served, lab: Lab) -> None:
    """100 verify calls with distinct ~770 KB logs (15,000 small events each) and a quote the attacker's
    software key signs over each nonce (so the quote checks pass and the log is read): no worker grows by
    100 MB. They used to keep every parsed log (lru_cache of 256, ~8 MB each)."""
    policy = lab.policy.to_dict()
    with httpx.Client(timeout=60) as client:  # one connection: every call goes to the same worker
        attacker = SoftwareAk()

        def attack(tag: int) -> None:
            nonce = served.nonce(client)
            evidence = attacker.evidence(nonce, bulk_log(lab.event_log, LOG_SIZE, tag)).to_dict()
            assert len(base64.b64decode(evidence["eventLog"])) > LOG_SIZE - 100
            response = served.verify({"nonce": nonce.hex(), "evidence": evidence, "policy": policy}, client)
            assert response.status_code == 200, response.text[:300]

        for tag in range(3):  # warm up: imports, first allocations
            attack(tag)
        before = worker_rss(served)
        for tag in range(3, 3 + VERIFY_CALLS):
            attack(tag)
        after = worker_rss(served)
    growth = {pid: after[pid] - before[pid] for pid in before if pid in after}
    assert growth and max(growth.values()) < MAX_GROWTH_BYTES, {
        pid: f"{before[pid] >> 20} -> {after[pid] >> 20} MB" for pid in growth
    }
