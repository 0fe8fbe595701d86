"""The dashboard's health figures and pictures through the real app over a store holding real verdicts: the
attested counts and the alert count, the node timeline and the fleet chart (their SVG marks are the stored
attestations), the history split by VM and vTPM, expected next to quoted PCRs, the event log by PCR and the
alerts' links and remediation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import Dashboard
from sqlalchemy import delete, select, update
from web_helpers import SUBSCRIPTION, Verdicts, attestation_record, element

from trustedlaunch.attest.policy import GoldenPcr, Policy
from trustedlaunch.control.alert_lifecycle import remediation_steps
from trustedlaunch.control.retention import RetentionSettings, prune
from trustedlaunch.control.tokens import create_token
from trustedlaunch.control.verifier import ak_name
from trustedlaunch.store.models import AlertRecord, AttestationRecord, Node
from trustedlaunch.store.vocabulary import AlertType
from trustedlaunch.web.charts import FLEET_BUCKETS, TIMELINE_HEIGHT
from trustedlaunch.web.dashboard import SESSION_COOKIE

OTHER_PCR4 = "ab" * 32


def test_overview_counts_attested_nodes_and_the_navigation_counts_open_alerts(dashboard: Dashboard) -> None:
    page = dashboard.client.get("/ui/").text
    assert element(page, f"cluster-{dashboard.seeded.cluster_id}").text.count("1/3 attested") == 2  # + pool
    pool = element(page, f"pool-{dashboard.seeded.pool_id}").text
    assert pool == "tlpool 1/3 attested Healthy"
    for path in ("/ui/", "/ui/alerts", f"/ui/pools/{dashboard.seeded.pool_id}"):
        assert element(dashboard.client.get(path).text, "alert-count").text == "1", path
    with dashboard.sessions.begin() as session:
        session.execute(update(AlertRecord).values(status="InProgress"))  # acknowledged: still open
        session.execute(update(Node).where(Node.name == "aks-tlpool-0").values(state="Failed"))
    page = dashboard.client.get("/ui/").text
    assert element(page, "alert-count").text == "1"
    assert element(page, f"pool-{dashboard.seeded.pool_id}").text == "tlpool 1/3 attested Degraded"
    nodes = dashboard.client.get(f"/ui/pools/{dashboard.seeded.pool_id}").text
    assert (
        element(nodes, "pool-health").text == "Degraded"
        and element(nodes, "pool-attested").text == "1/3 attested"
    )
    with dashboard.sessions.begin() as session:
        session.execute(update(AlertRecord).values(status="Resolved"))
    assert element(dashboard.client.get("/ui/").text, "alert-count").text == "0"


def test_the_alert_count_is_the_scope_s(dashboard: Dashboard) -> None:
    with dashboard.sessions.begin() as session:
        token = create_token(session, "other-rg", f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-other")
    client = dashboard.client
    client.cookies.delete(SESSION_COOKIE, path="/ui")
    assert client.post("/ui/login", data={"token": token}, follow_redirects=False).status_code == 303
    assert element(client.get("/ui/").text, "alert-count").text == "0"


def _add(dashboard: Dashboard, *records: AttestationRecord) -> list[int]:
    with dashboard.sessions.begin() as session:
        session.add_all(records)
        session.flush()
        return [record.id for record in records]


def test_the_fleet_chart_is_the_stored_attestations(dashboard: Dashboard, verdicts: Verdicts) -> None:
    """Seeded: every node passed an hour ago; now one passes, two fail. Added: node 0 failed 5 hours ago."""
    five_hours_ago = datetime.now(UTC) - timedelta(hours=5)
    _add(
        dashboard,
        attestation_record(
            dashboard.seeded.pool_id, "aks-tlpool-0", verdicts.grub_failed, verdicts.evidence, five_hours_ago
        ),
    )
    chart = element(dashboard.client.get("/ui/").text, "fleet-chart")
    buckets = chart.all("g", "bucket")
    assert len(buckets) == FLEET_BUCKETS
    figures = [(int(bucket["data-attested"]), int(bucket["data-total"])) for bucket in buckets]
    assert figures == [(0, 0)] * 18 + [(0, 1)] * 4 + [(3, 3), (1, 3)]
    # a red slot per bucket with a node, a green bar per bucket with an attested node, its height the share
    assert len(chart.all("rect", "bar-failed")) == 6
    full, third = (float(bar["height"]) for bar in chart.all("rect", "bar-attested"))
    assert abs(third - full / 3) < 0.2
    assert "1/3 attested (33 %)" in chart.text


def test_a_scoped_token_s_chart_shows_only_its_scope(dashboard: Dashboard) -> None:
    with dashboard.sessions.begin() as session:
        token = create_token(session, "other-rg", f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-other")
    client = dashboard.client
    client.cookies.delete(SESSION_COOKIE, path="/ui")
    client.post("/ui/login", data={"token": token}, follow_redirects=False)
    chart = element(client.get("/ui/").text, "fleet-chart")
    assert {bucket["data-total"] for bucket in chart.all("g", "bucket")} == {"0"}


def test_the_node_timeline_and_its_history_by_vm_and_vtpm(
    dashboard: Dashboard, verdicts: Verdicts, other_vtpm: Verdicts
) -> None:
    """Node 0 (seeded: two Interval attestations on vTPM A) is rebooted (a Provisioning attestation, the
    same AK), then reimaged (a new vTPM: another AK), then fails."""
    pool_id, name = dashboard.seeded.pool_id, "aks-tlpool-0"
    now = datetime.now(UTC)

    def record(
        result: Verdicts, passed: bool, minutes: int, trigger: str, duration: float
    ) -> AttestationRecord:
        outcome = result.passed if passed else result.grub_failed
        row = attestation_record(pool_id, name, outcome, result.evidence, now + timedelta(minutes=minutes))
        row.trigger, row.duration_ms = trigger, duration
        return row

    reboot, reimage, failed = _add(
        dashboard,
        record(verdicts, True, 1, "Provisioning", 300.0),
        record(other_vtpm, True, 2, "Provisioning", 900.0),
        record(other_vtpm, False, 3, "Interval", 60.0),
    )
    assert other_vtpm.evidence.ak_public != verdicts.evidence.ak_public
    new_ak = ak_name(other_vtpm.evidence.ak_public)
    assert new_ak is not None
    with dashboard.sessions.begin() as session:
        session.execute(update(Node).where(Node.name == name).values(enrolled_ak_name=new_ak.hex()))
        seeded = list(
            session.scalars(
                select(AttestationRecord.id)
                .where(AttestationRecord.node_name == name)
                .order_by(AttestationRecord.id)
            )
        )[:2]
    page = dashboard.client.get(f"/ui/pools/{pool_id}/nodes/{name}").text

    # the timeline: one tick per stored attestation, oldest left, green/red as it passed, height its duration
    ticks = element(page, "timeline").all("rect", "tick")
    assert [int(tick["data-record-id"]) for tick in ticks] == [*seeded, reboot, reimage, failed]
    assert [("tick-passed" in tick["class"]) for tick in ticks] == [True, True, True, True, False]
    xs = [float(tick["x"]) for tick in ticks]
    assert xs == sorted(xs) and xs[0] == 0
    heights = {int(tick["data-record-id"]): float(tick["height"]) for tick in ticks}
    assert (
        heights[reimage] > heights[reboot] > heights[failed] > heights[seeded[0]] > 0
    )  # 900, 300, 60, 42 ms
    assert all(float(tick["y"]) + float(tick["height"]) == TIMELINE_HEIGHT - 16 for tick in ticks)

    # the history: the reboot starts VM 2 on the same vTPM, the reimage VM 3 on vTPM 2 (the node's now)
    history = element(page, "history")
    generations = [row["id"] for row in history.all("tr", "generation")]
    assert generations == ["generation-vm3-vtpm2", "generation-vm2-vtpm1", "generation-vm1-vtpm1"]
    assert "current vTPM" in element(page, "generation-vm3-vtpm2").text
    assert "current vTPM" not in element(page, "generation-vm2-vtpm1").text
    assert f"(AK {new_ak.hex()[4:16]}…)" in element(page, "generation-vm3-vtpm2").text
    expected = {
        failed: "VM 3 · vTPM 2",
        reimage: "VM 3 · vTPM 2 (booted)",
        reboot: "VM 2 · vTPM 1 (booted)",
        seeded[1]: "VM 1 · vTPM 1",
        seeded[0]: "VM 1 · vTPM 1",
    }
    for record_id, generation in expected.items():
        assert element(page, f"record-{record_id}").text.split(" ms ")[1].startswith(generation + " evidence")


def _policy(verdicts: Verdicts, pcr4: str) -> str:
    quoted = verdicts.evidence.pcr_values
    assert quoted is not None
    golden = (GoldenPcr("sha256", 4, pcr4), GoldenPcr("sha256", 7, quoted["sha256"][7].hex()))
    return Policy(golden_pcrs=golden).to_json()


def test_evidence_shows_expected_next_to_quoted_pcrs(dashboard: Dashboard, verdicts: Verdicts) -> None:
    record_id = dashboard.seeded.records["aks-tlpool-1"]
    with dashboard.sessions.begin() as session:
        session.execute(
            update(Node)
            .where(Node.name == "aks-tlpool-1")
            .values(attestation_policy=_policy(verdicts, OTHER_PCR4))
        )
    page = dashboard.client.get(f"/ui/attestations/{record_id}").text
    assert verdicts.evidence.pcr_values is not None
    quoted = {index: value.hex() for index, value in verdicts.evidence.pcr_values["sha256"].items()}
    pcr4 = element(page, "pcr-sha256-4")
    assert "pcr-mismatch" in pcr4.classes
    assert pcr4.text == f"sha256 4 {OTHER_PCR4} {quoted[4]} differs"
    pcr7 = element(page, "pcr-sha256-7")
    assert "pcr-mismatch" not in pcr7.classes and pcr7.text == f"sha256 7 {quoted[7]} {quoted[7]} matches"
    assert element(page, "pcr-sha256-0").text == f"sha256 0 — {quoted[0]}"  # no value predicted
    assert "no-expected" not in page

    # once the node is reprovisioned, its policy is the new VM's: the old attestation shows no prediction
    _add(
        dashboard,
        attestation_record(
            dashboard.seeded.pool_id, "aks-tlpool-1", verdicts.passed, verdicts.evidence, datetime.now(UTC)
        ),
    )
    with dashboard.sessions.begin() as session:
        session.execute(
            update(AttestationRecord)
            .where(AttestationRecord.id > record_id, AttestationRecord.node_name == "aks-tlpool-1")
            .values(trigger="Provisioning")
        )
    page = dashboard.client.get(f"/ui/attestations/{record_id}").text
    assert "No predicted policy is stored" in element(page, "no-expected").text
    assert element(page, "pcr-sha256-4").text == f"sha256 4 — {quoted[4]}"


def test_the_event_log_is_grouped_and_filtered_by_pcr(dashboard: Dashboard, verdicts: Verdicts) -> None:
    record_id = dashboard.seeded.records["aks-tlpool-1"]
    page = dashboard.client.get(f"/ui/attestations/{record_id}").text
    by_pcr: dict[int, list[int]] = {}
    for event in verdicts.log.events:
        by_pcr.setdefault(event.pcr, []).append(event.index)
    events = element(page, "events")
    groups = events.all("details", "pcr-group")
    assert [group["id"] for group in groups] == [f"pcr-group-{pcr}" for pcr in sorted(by_pcr)]
    # the group of the failing grub event (PCR 4) is open, the others closed
    assert [group["id"] for group in groups if "open" in group] == ["pcr-group-4"]
    for pcr, indexes in by_pcr.items():
        rows = element(page, f"pcr-group-{pcr}").all("tr", "event")
        assert [row["id"] for row in rows] == [f"event-{index}" for index in indexes]
    filtered = element(dashboard.client.get(f"/ui/attestations/{record_id}?pcr=7").text, "events")
    assert [row["id"] for row in filtered.all("tr", "event")] == [f"event-{index}" for index in by_pcr[7]]
    assert [group["id"] for group in filtered.all("details")] == ["pcr-group-7"]
    assert "No event of PCR 23" in dashboard.client.get(f"/ui/attestations/{record_id}?pcr=23").text


def test_alerts_link_to_their_cluster_pool_and_node_and_show_their_remediation(dashboard: Dashboard) -> None:
    seeded = dashboard.seeded
    page = dashboard.client.get("/ui/alerts").text
    row = element(page, f"alert-{seeded.alert_id}")
    links = {link.get("class"): link["href"] for link in row.all("a")}
    assert links["cluster"] == f"/ui/clusters/{seeded.cluster_id}"
    assert links["pool"] == f"/ui/pools/{seeded.pool_id}"
    assert links["node"] == f"/ui/pools/{seeded.pool_id}/nodes/aks-tlpool-1"
    assert links["evidence"] == f"/ui/attestations/{seeded.records['aks-tlpool-1']}"
    for target in (links["cluster"], links["pool"], links["node"]):
        assert dashboard.client.get(target).status_code == 200
    steps = remediation_steps(AlertType.ATTESTATION_FAILURE)
    assert all(step in row.text for step in steps)


def test_an_unreachable_node_s_evidence_and_its_auto_repairs(
    dashboard: Dashboard, verdicts: Verdicts
) -> None:
    """An attestation the agent never answered: the predicted PCRs show as not quoted; the node's history
    lists its auto-repairs."""
    pool_id, name = dashboard.seeded.pool_id, "aks-tlpool-2"
    unreachable = AttestationRecord(
        pool_id=pool_id,
        node_name=name,
        time=datetime.now(UTC),
        trigger="Interval",
        ok=False,
        status="Unreachable",
        findings=[],
        duration_ms=5000.0,
    )
    (record_id,) = _add(dashboard, unreachable)
    repairs = [
        {
            "time": "2026-12-06T10:00:00+00:00",
            "action": "Reboot",
            "cause": "VM paused",
            "outcome": "done: ok",
        },
        {"time": "2026-12-06T10:06:00+00:00", "action": "Reimage", "cause": "VM paused", "outcome": ""},
    ]
    with dashboard.sessions.begin() as session:
        session.execute(
            update(Node)
            .where(Node.name == name)
            .values(attestation_policy=_policy(verdicts, OTHER_PCR4), repairs=repairs)
        )
    page = dashboard.client.get(f"/ui/attestations/{record_id}").text
    assert "The node sent no PCR values." in page and "The node sent no event log." in page
    pcr4 = element(page, "pcr-sha256-4")
    assert pcr4.text == f"sha256 4 {OTHER_PCR4} — not quoted" and "pcr-mismatch" not in pcr4.classes
    history = dashboard.client.get(f"/ui/pools/{pool_id}/nodes/{name}").text
    rows = element(history, "repairs").text
    assert rows.index("Reimage VM paused in progress") < rows.index(
        "Reboot VM paused done: ok"
    )  # newest first
    ticks = element(history, "timeline").all("rect", "tick")
    assert ticks[-1]["data-record-id"] == str(record_id) and "tick-failed" in ticks[-1]["class"]


def test_records_retention_stripped_show_an_unknown_vtpm(
    dashboard: Dashboard, verdicts: Verdicts, other_vtpm: Verdicts
) -> None:
    """Node 2's history, oldest first: VM 1 (vTPM A: provisioned, interval), VM 2 (a reboot of vTPM A whose
    agent never answered: no quote), VM 3 (a reboot on vTPM A), VM 4 (a reimage: vTPM B, the node's
    enrolled one). Retention then strips the evidence of all but the newest records."""
    pool_id, name = dashboard.seeded.pool_id, "aks-tlpool-2"
    start = datetime.now(UTC) - timedelta(days=1)
    with dashboard.sessions.begin() as session:
        session.execute(delete(AttestationRecord).where(AttestationRecord.node_name == name))
    history = [
        (verdicts, "Provisioning"),
        (verdicts, "Interval"),
        (None, "Provisioning"),
        (verdicts, "Provisioning"),
        (verdicts, "Interval"),
        (other_vtpm, "Provisioning"),
        (other_vtpm, "Interval"),
    ]
    rows = []
    for minutes, (source, trigger) in enumerate(history):
        if source is None:
            row = AttestationRecord(
                pool_id=pool_id,
                node_name=name,
                time=start + timedelta(minutes=minutes),
                trigger=trigger,
                ok=False,
                status="Unreachable",
                findings=[],
                duration_ms=5000.0,
            )
        else:
            row = attestation_record(
                pool_id, name, source.passed, source.evidence, start + timedelta(minutes=minutes)
            )
            row.trigger = trigger
        rows.append(row)
    ids = _add(dashboard, *rows)
    enrolled = ak_name(other_vtpm.evidence.ak_public)
    assert enrolled is not None
    with dashboard.sessions.begin() as session:
        session.execute(update(Node).where(Node.name == name).values(enrolled_ak_name=enrolled.hex()))

    def generations(keep: int) -> tuple[list[str], dict[int, str], str]:
        with dashboard.sessions.begin() as session:
            prune(session, RetentionSettings(evidence_per_node=keep))
        page = dashboard.client.get(f"/ui/pools/{pool_id}/nodes/{name}").text
        cells = {
            record_id: element(page, f"record-{record_id}").text.split(" ms ")[1].removesuffix(" evidence")
            for record_id in ids
        }
        return [row["id"] for row in element(page, "history").all("tr", "generation")], cells, page

    # every quote kept but VM 2's: VM 2 lies between two quotes of vTPM A, so it ran on vTPM A
    groups, cells, page = generations(keep=len(ids))
    assert groups == [
        "generation-vm4-vtpm2",
        "generation-vm3-vtpm1",
        "generation-vm2-vtpm1",
        "generation-vm1-vtpm1",
    ]
    assert cells[ids[2]] == "VM 2 · vTPM 1 (booted)"
    assert "current vTPM" in element(page, "generation-vm4-vtpm2").text

    # VM 3's interval quote kept, its provisioning one stripped: a VM keeps its vTPM (A); VM 1 and VM 2
    # kept no quote and have no known vTPM before them
    groups, cells, page = generations(keep=4)
    assert groups == [
        "generation-vm4-vtpm2",
        "generation-vm3-vtpm1",
        "generation-vm2-vtpmunknown",
        "generation-vm1-vtpmunknown",
    ]
    assert [cells[record_id] for record_id in ids] == [
        "VM 1 · vTPM unknown (booted)",
        "VM 1 · vTPM unknown",
        "VM 2 · vTPM unknown (booted)",
        "VM 3 · vTPM 1 (booted)",
        "VM 3 · vTPM 1",
        "VM 4 · vTPM 2 (booted)",
        "VM 4 · vTPM 2",
    ]

    # only VM 4's quotes kept: the stripped VMs are unknown, never the node's current vTPM
    groups, cells, page = generations(keep=2)
    assert groups == [
        "generation-vm4-vtpm1",
        "generation-vm3-vtpmunknown",
        "generation-vm2-vtpmunknown",
        "generation-vm1-vtpmunknown",
    ]
    unknown = element(page, "generation-vm3-vtpmunknown")
    assert "current vTPM" not in unknown.text and "attestation key is unknown" in unknown.text
    assert "current vTPM" in element(page, "generation-vm4-vtpm1").text
    assert cells[ids[4]] == "VM 3 · vTPM unknown"
