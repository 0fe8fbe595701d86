"""store.models.UtcDateTime: every timestamp read back is aware UTC, whatever zone it was written in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.store.models import Operation


def _operation(operation_id: str, start: datetime) -> Operation:
    return Operation(
        id=operation_id,
        subscription_id="s",
        location="eastus",
        resource_id="/subscriptions/s/x",
        kind="Create",
        status="InProgress",
        start_time=start,
    )


def test_sqlite_hands_back_aware_utc(tmp_path: Path) -> None:
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "admin-token")
    utc = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    berlin = utc.astimezone(timezone(timedelta(hours=1)))  # the same moment, another zone
    with sessions.begin() as session:
        session.add_all([_operation("utc", utc), _operation("berlin", berlin)])
        session.add(_operation("naive", utc.replace(tzinfo=None)))  # naive: taken as UTC
    with sessions() as session:
        stored = {op.id: op.start_time for op in session.scalars(select(Operation))}
        later = session.scalars(select(Operation.id).where(Operation.start_time > utc - timedelta(seconds=1)))
        assert sorted(later) == ["berlin", "naive", "utc"]  # compared in UTC in SQL too
    assert stored == {"utc": utc, "berlin": utc, "naive": utc}
    assert all(value.tzinfo is UTC for value in stored.values())
    engine.dispose()
