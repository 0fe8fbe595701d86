"""A lost hypervisor host's alert where tenants and admins look: on the dashboard's alerts page (naming the
host, not a cluster or pool) and in the subscription's Microsoft.Security alerts, resolved when the host
answers again."""

from __future__ import annotations

from conftest import Dashboard
from sqlalchemy import select
from web_helpers import SUBSCRIPTION, element

from trustedlaunch.control.node_hosts import (
    FAILED_CHECKS,
    HostCapacity,
    HostCheck,
    HostSpec,
    put_host,
    record_check,
)
from trustedlaunch.store.models import Node

CAUSE = "Failed to connect socket to '/run/libvirt/libvirt-sock': Connection refused"


def test_a_lost_hosts_alert_names_the_host_and_resolves_when_it_answers(dashboard: Dashboard) -> None:
    with dashboard.sessions.begin() as session:
        host, _ = put_host(session, HostSpec("rack1-host3", "qemu+tls://rack1-host3.example/system", 8192, 8))
        session.scalars(select(Node).where(Node.name == "aks-tlpool-0")).one().host_id = host.id
        for _ in range(FAILED_CHECKS):
            record_check(session, host, HostCheck(host.id, CAUSE))
    table = element(dashboard.client.get("/ui/alerts?status=Active").text, "alerts").text
    assert "Host_Lost" in table and "hypervisor host rack1-host3" in table
    assert f"no answer to 3 checks in a row: {CAUSE}" in table and "nodes on it: aks-tlpool-0" in table
    assert "made again on other hosts" in table

    api = {"Authorization": f"Bearer {dashboard.token}"}
    alerts_path = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Security/alerts"
    listed = dashboard.client.get(alerts_path, headers=api, params={"api-version": "2024-09-01"})
    assert listed.status_code == 200, listed.text
    [lost] = [a for a in listed.json()["value"] if a["properties"]["alertType"] == "Host_Lost"]
    assert lost["properties"]["compromisedEntity"] == "host/rack1-host3"
    assert lost["properties"]["alertDisplayName"] == "Hypervisor host lost"

    with dashboard.sessions.begin() as session:
        record_check(session, session.merge(host), HostCheck(host.id, None, HostCapacity(8192, 8)))
    assert "rack1-host3" in dashboard.client.get("/ui/alerts?status=Resolved").text
    assert "rack1-host3" not in dashboard.client.get("/ui/alerts?status=Active").text
