"""Attack (issue 12, item 12): alerts and attestation evidence are never pruned, so a flapping node (or a
tenant whose nodes keep failing) grows the store without bound.

Expected: `tl serve` prunes on its own, by the configured settings: Resolved alerts by age and every
subscription's alerts by count (Resolved before Active), attestation records by age and count per node,
and the raw evidence (event log, quote) of all but a node's newest records; nothing that is still needed
is lost (Active alerts within the bound, a node's newest record with its evidence and token, another
subscription's alerts). The store is written as the reconciler writes it (real swtpm evidence), then
`tl serve --workers 2` runs and is asked over HTTP."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from monitoring_rows import (
    RealAttestation,
    add_alert,
    add_attestation,
    add_node,
    minutes_ago,
    real_attestation,
)
from served_store import OTHER_SUB, SUB, ServedStore, bearer, served_store, serving
from sqlalchemy import func, select

from trustedlaunch.control.bootstrap import attestation_token_issuer
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.resource_groups import put_group
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.models import AgentPool, AlertRecord, Node

DAY = 24 * 60.0  # minutes
SETTINGS = {
    "TL_RETENTION_INTERVAL_SECONDS": "1",
    "TL_ALERT_RETENTION_DAYS": "30",
    "TL_MAX_ALERTS_PER_SUBSCRIPTION": "5",
    "TL_ATTESTATION_RETENTION_DAYS": "30",
    "TL_MAX_ATTESTATIONS_PER_NODE": "10",
    "TL_EVIDENCE_RETENTION_DAYS": "7",
    "TL_MAX_EVIDENCE_PER_NODE": "3",
}
POOL = (
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c1"
    "/agentPools/nodepool1"
)
API = {"api-version": "2024-09-01"}
ALERTS = "/providers/Microsoft.Security/alerts"
PRUNE_SECONDS = 30


def trusted_pool(store: ServedStore) -> None:
    """A finished cluster with one vTPM pool, as the API and the reconciler leave it."""
    with store.sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        put_group(session, SUB, "rg", "eastus", None)
        spec = PoolSpec(
            "nodepool1", count=2, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
        )
        _cluster, operation, _created = put_cluster(
            session, ResourcePath(SUB, "rg", "c1"), ClusterSpec("eastus", agent_pools=[spec])
        )
        finish_operation(session, operation, "Succeeded")


@dataclass
class History:
    """What was written: attestation record ids per node (newest first) and alert ids by kind."""

    records: dict[str, list[int]] = field(default_factory=dict)
    alerts: dict[str, list[str]] = field(default_factory=dict)


def write_history(store: ServedStore, attestation: RealAttestation) -> History:
    """Attestation records of a flapping node (one a day for 15 days, then one now with its token), of a
    node attested once, 100 days ago, and of a node deleted since (100 and 5 days ago); Active and Resolved
    alerts of the subscription, two recent ones of another subscription."""
    issuer = attestation_token_issuer(store.token_file)  # the keys `tl serve` signs and verifies with
    history = History()
    with store.sessions.begin() as session:
        pool = session.scalars(select(AgentPool)).one()
        flapping = add_node(session, pool, 0, state="Failed")  # not Ready: the reconciler leaves it alone
        quiet = add_node(session, pool, 1, state="Failed")
        deleted = add_node(session, pool, 2, state="Failed")

        def attest(node: Node, days: float, ok: bool = True, token: bool = False) -> None:
            record = add_attestation(
                session,
                node,
                attestation,
                ok=ok,
                when=minutes_ago(days * DAY),
                issuer=issuer if token else None,
            )
            history.records.setdefault(node.name, []).insert(0, record.id)

        for days in range(14, -1, -1):
            attest(flapping, days + 0.01)
        attest(flapping, 0, token=True)
        attest(quiet, 100, token=True)
        attest(deleted, 100, ok=False)
        attest(deleted, 5, ok=False)

        def alert(subscription: str, days: float, status: str = "Active") -> str:
            row = add_alert(
                session, flapping, attestation, subscription_id=subscription, when=minutes_ago(days * DAY)
            )
            if status == "Resolved":
                row.status, row.resolved_at = "Resolved", row.time
            return row.id

        history.alerts = {
            "active": [alert(SUB, days) for days in (0.1, 50, 200)],
            "resolved long ago": [alert(SUB, days, "Resolved") for days in (35, 40)],
            "resolved recently": [alert(SUB, days, "Resolved") for days in (0.01, 0.02, 0.5, 1, 2)],
            "other subscription": [alert(OTHER_SUB, days, "Resolved") for days in (1, 2)],
        }
        session.delete(deleted)  # its history outlives it
    return history


def alert_names(url: str, token: str, subscription: str) -> list[str]:
    response = httpx.get(f"{url}/subscriptions/{subscription}{ALERTS}", headers=bearer(token), params=API)
    assert response.status_code == 200, response.text
    return [alert["name"] for alert in response.json()["value"]]


def test_alerts_and_attestation_evidence_are_pruned_by_age_and_count(tmp_path: Path, testdata: Path) -> None:
    (tmp_path / "quote").mkdir()
    attestation = real_attestation(testdata, tmp_path / "quote")
    with served_store(tmp_path / "serve", **SETTINGS) as store:
        trusted_pool(store)
        history = write_history(store, attestation)
        admin = store.admin_token
        with serving(store) as url:
            deadline = time.monotonic() + PRUNE_SECONDS
            while len(alert_names(url, admin, SUB)) > 5:
                assert time.monotonic() < deadline, "the alerts were not pruned"
                time.sleep(0.5)
            # the count bound: every Active alert, then the newest Resolved ones; old Resolved ones are gone
            alerts = history.alerts
            assert alert_names(url, admin, SUB) == [*alerts["resolved recently"][:2], *alerts["active"]]
            assert alert_names(url, admin, OTHER_SUB) == alerts["other subscription"]

            def listed(node: str) -> list[int]:
                response = httpx.get(
                    f"{url}{POOL}/machines/{node}/attestations",
                    params={**API, "$top": 1000},
                    headers=bearer(admin),
                )
                assert response.status_code == 200, response.text
                return [int(record["name"]) for record in response.json()["value"]]

            def has_evidence(node: str, record: int) -> bool:
                response = httpx.get(
                    f"{url}{POOL}/machines/{node}/attestations/{record}", headers=bearer(admin), params=API
                )
                assert response.status_code == 200, response.text
                properties = response.json()["properties"]
                assert properties["findings"] is not None and properties["pcrs"]  # the verdict stays
                evidence = properties["evidence"]
                return all(evidence[part] for part in ("eventLog", "quote", "signature", "akPublic"))

            flapping = history.records["aks-nodepool1-0"]
            assert listed("aks-nodepool1-0") == flapping[:10]
            assert [has_evidence("aks-nodepool1-0", record) for record in flapping[:10]] == [True] * 3 + [
                False
            ] * 7
            # a node's newest record stays, with its evidence and token, however old
            quiet = history.records["aks-nodepool1-1"]
            assert listed("aks-nodepool1-1") == quiet and has_evidence("aks-nodepool1-1", quiet[0])
            for node in ("aks-nodepool1-0", "aks-nodepool1-1"):
                token = httpx.post(
                    f"{url}{POOL}/machines/{node}/getAttestationToken", headers=bearer(admin), params=API
                )
                assert token.status_code == 200, token.text
            # a deleted node's history goes by age only
            assert listed("aks-nodepool1-2") == history.records["aks-nodepool1-2"][:1]
        with store.sessions() as session:
            assert session.scalar(select(func.count()).select_from(AlertRecord)) == 7
